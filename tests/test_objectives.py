"""Objectives: each task's collate against the records (decoded back to text), instruction placement from
`qzhou.instructions` (the rule evaluation reads), processes' parts rebuilding the whole batch with the same random
draws, instruction lists, one dataset schema for recipes and manifests, and a new task as one class."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from test_trainer import recipe, sent

from qzhou.data.manifest import load_manifest
from qzhou.instructions import instructed_sides
from qzhou.losses import qzhou_infonce
from qzhou.modeling.embedder import Embedder
from qzhou.training.distributed import gather
from qzhou.training.objectives import REGISTRY, Objective, Role, objective_for, pick_instruction, register
from qzhou.training.recipe import load_recipe
from qzhou.training.trainer import train


@pytest.fixture(scope="module")
def embedder(base_dirs):
    return Embedder.load(base_dirs["qwen2"], dtype="float32", device="cpu", attention="bidirectional", pooling="mean")


def make(task, embedder, tmp_path, seed=3, **extra):
    cfg = load_recipe(recipe(tmp_path, "x", seed=seed, query_max_length=128, passage_max_length=128, **extra))
    return objective_for(task)(cfg, embedder, random.Random(seed))


RECORDS = {
    "retrieval": [{"query": sent(i, 2), "pos": [sent(i + 1), sent(i + 4)], "neg": [sent(i + j + 5) for j in range(i % 3)]}
                  for i in range(6)],
    "classification": [{"query": sent(i, 2), "pos": [sent(i + 1), sent(i + 4)],
                        "neg": [sent(i + j + 5) for j in range(i % 3)], "label": i % 2,
                        "neg_labels": [(i + 1) % 2] * (i % 3)} for i in range(6)],
    "sts": [{"text1": sent(i, 3), "text2": sent(i + 2), "score": float(i % 5)} for i in range(6)],
}
# which record text each role shows (retrieval / classification draw one positive and up to k negatives)
SOURCES = {"query": "query", "anchor": "query", "text1": "text1", "text2": "text2"}
# the hand-written rule: retrieval instructs queries only, the symmetric tasks every text
INSTRUCTED = {"retrieval": {"query"}, "classification": {"anchor", "positive", "negative"}, "sts": {"text1", "text2"}}


@pytest.mark.parametrize("task", list(RECORDS))
def test_collate_rows_instructions_and_parts(task, embedder, tmp_path):
    records, instruction = RECORDS[task], "search relevant passage"
    whole, labels = make(task, embedder, tmp_path).collate(records, instruction)
    parts = [make(task, embedder, tmp_path).collate(records, instruction, part=slice(a, b)) for a, b in ((0, 2), (2, 6))]
    assert list(whole) == [r.name for r in objective_for(task).roles]
    for role, rows in whole.items():  # processes' parts, concatenated, are the whole batch (same random draws)
        assert rows == parts[0][0][role] + parts[1][0][role], (task, role)
    for key, value in labels.items():
        assert torch.equal(value, torch.cat([parts[0][1][key], parts[1][1][key]])), (task, key)
    kind = objective_for(task)
    assert {r.name for r in kind.roles if r.side in instructed_sides(kind.task_type)} == INSTRUCTED[task]
    fmt = embedder.config.format_query
    decode = lambda rows: embedder.tokenizer.batch_decode(rows, skip_special_tokens=True)  # noqa: E731
    spell = lambda text: decode([embedder.tokenizer(text)["input_ids"]])[0]  # as the tiny vocabulary spells it  # noqa: E731
    for role, rows in whole.items():
        wrap = (lambda t: fmt(t, instruction)) if role in INSTRUCTED[task] else (lambda t: t)
        for text, r in zip(decode(rows), records if role in SOURCES else [None] * len(rows)):
            if r is not None:
                assert text == spell(wrap(r[SOURCES[role]])), (task, role)
            else:  # a drawn document: one of the records' texts of that kind
                pool = {spell(wrap(t)) for rec in records for t in rec["pos" if role == "positive" else "neg"]}
                assert text in pool, (task, role, text)
    if task != "sts":
        assert len(whole["negative"]) == sum(min(len(r["neg"]), 2) for r in records)


def test_instruction_lists_pick_one_wording_per_record(embedder, tmp_path):
    """A list of instructions: each record gets one wording, every wording is used, a record keeps its wording across
    calls and processes, and STS puts the record's one wording on both texts. A record's own instruction wins."""
    wordings = ["Find the passage", "Retrieve text that answers this", "Given a question, retrieve answers"]
    records = [{"query": f"question number {i}", "pos": [sent(i)]} for i in range(40)]
    records[5]["instruction"] = "Own wording"
    objective = make("retrieval", embedder, tmp_path, hard_negatives=0)
    dec = lambda rows: embedder.tokenizer.batch_decode(rows, skip_special_tokens=True)  # noqa: E731
    fmt = lambda text, w: dec([embedder.tokenizer(embedder.config.format_query(text, w))["input_ids"]])[0]  # noqa: E731
    seen = []
    for r, text in zip(records, dec(objective.collate(records, wordings)[0]["query"])):
        used = [w for w in wordings + ["Own wording"] if text == fmt(r["query"], w)]
        assert len(used) == 1, text
        seen.append(used[0])
    assert seen[5] == "Own wording" and set(seen) == set(wordings) | {"Own wording"}
    again = dec(objective.collate(records[10:20], wordings, part=slice(2, 7))[0]["query"])
    assert again == [fmt(r["query"], w) for r, w in zip(records[12:17], seen[12:17])]
    pairs = [{"text1": f"sentence {i}", "text2": f"other {i}", "score": 1.0} for i in range(12)]
    rows = make("sts", embedder, tmp_path).collate(pairs, wordings)[0]
    for p, x, y in zip(pairs, dec(rows["text1"]), dec(rows["text2"])):
        w = [w for w in wordings if x == fmt(p["text1"], w)]
        assert len(w) == 1 and y == fmt(p["text2"], w[0]) and pick_instruction(p, wordings) == w[0]


def test_one_dataset_schema(tmp_path):
    """Recipes and manifests share DatasetSpec: the same errors for an unknown task or an empty instruction list."""
    (tmp_path / "a.jsonl").write_text("{}\n")
    entry = {"name": "a", "path": "a.jsonl", "task": "retrieval"}
    for bad, match in (({"task": "nope"}, r"task must be one of classification, (.*, )?retrieval, sts \(got 'nope'\)"),
                       ({"instruction": []}, "instruction"), ({"batch_size": 0}, "batch_size")):
        (tmp_path / "m.yaml").write_text(yaml.safe_dump({"datasets": [{**entry, **bad}]}))
        with pytest.raises(ValueError, match=match):
            load_manifest(tmp_path / "m.yaml")
        (tmp_path / "r.yaml").write_text(yaml.safe_dump({"model": {"base": "x"}, "datasets": [{**entry, **bad}],
                                                         "stages": [{"name": "s", "datasets": ["a"], "steps": 1}]}))
        with pytest.raises(ValueError, match=match):
            load_recipe(tmp_path / "r.yaml")
    ok = load_recipe(tmp_path / "r.yaml", ["datasets.0.task=retrieval", "datasets.0.batch_size=2",
                                           "datasets.0.instruction=[one, two]"])
    assert ok.datasets[0].instruction == ["one", "two"] and ok.datasets[0].path == (tmp_path / "a.jsonl").resolve()


class Pairs(Objective):
    """The README's example: (query, first positive) pairs, in-batch negatives only."""

    task, task_type, record_schema, retrieval = "pairs", "Retrieval", "retrieval", True
    roles = (Role("query", "query", "query"), Role("positive", "document", "passage"))

    def collate(self, records, instruction, part=None):
        mine = records[part or slice(None)]
        queries = [self.text("query", r["query"], pick_instruction(r, instruction)) for r in mine]
        return {"query": self.tokenize("query", queries),
                "positive": self.tokenize("positive", [r["pos"][0] for r in mine])}, {}

    def loss(self, embeddings, labels):
        return qzhou_infonce(gather(embeddings["query"]), gather(embeddings["positive"]), tau=self.loss_config.tau)


def test_a_new_task_is_one_class(tmp_path, base_dirs):
    with pytest.raises(ValueError, match=r"unknown task 'pairs'; known: classification, (.*, )?retrieval, sts"):
        objective_for("pairs")
    register(Pairs)
    try:
        path = recipe(tmp_path, base_dirs["qwen2"], log_with="none")
        raw = yaml.safe_load(path.read_text())
        raw["datasets"][0]["task"] = "pairs"
        raw["batch_size"]["pairs"] = 4
        raw["stages"] = raw["stages"][:1]
        path.write_text(yaml.safe_dump(raw))
        final = train(load_recipe(path))
        lines = [json.loads(x) for x in (final.parent / "losses.jsonl").read_text().splitlines()]
        assert [x["task"] for x in lines] == ["pairs"] * 3 and all(x["loss"] > 0 for x in lines)
    finally:
        REGISTRY.pop("pairs")
