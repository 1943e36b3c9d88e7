"""The collator's groups and the merged document forward: one forward over groups padded to a common width gives
the embeddings of one forward per group, for left (decoders) and right (BERT) padding, mean and last-token."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from test_trainer import sent

from qzhou.modeling.embedder import Embedder
from qzhou.training.collate import Collator, embed_in_runs, length_runs, merge_groups, merge_pays


@pytest.mark.parametrize("arch,attention,pooling", [("qwen2", "bidirectional", "mean"), ("qwen3", "causal", "last"),
                                                    ("bert", None, "cls")])
def test_merged_forward_equals_separate(base_dirs, arch, attention, pooling):
    e = Embedder.load(base_dirs[arch], dtype="float32", device="cpu",
                      **{k: v for k, v in (("attention", attention), ("pooling", pooling)) if v})
    e.eval()
    col = Collator(e.tokenizer, e.config, query_max_length=32, passage_max_length=128, hard_negatives=2)
    records = [{"query": sent(i, 2), "pos": [sent(i + 1, 1)], "neg": [sent(i + 2, 6 + 2 * i), sent(i + 3, 2)]}
               for i in range(4)]
    groups, _ = col("retrieval", records, "Find it")
    assert groups[1]["input_ids"].shape[1] != groups[2]["input_ids"].shape[1]  # different widths to pad
    merged = merge_groups(groups[1:], e.config.padding_side, e.tokenizer.pad_token_id)
    with torch.no_grad():
        together = e(merged["input_ids"], merged["attention_mask"]).split([4, 8])
        for g, got in zip(groups[1:], together):
            torch.testing.assert_close(got, e(g["input_ids"], g["attention_mask"]), atol=2e-5, rtol=1e-4)
    side = merged["attention_mask"][:, 0] if e.config.padding_side == "left" else merged["attention_mask"][:, -1]
    assert side.min() == 0  # padding really was added on the configured side


def test_parts_rebuild_the_whole_batch(base_dirs):
    e = Embedder.load(base_dirs["qwen2"], dtype="float32", device="cpu", attention="bidirectional", pooling="mean")
    records = [{"query": sent(i, 2), "pos": [sent(i + 1), sent(i + 4)], "neg": [sent(i + j + 5) for j in range(i % 3)],
                "label": i % 2, "neg_labels": [(i + 1) % 2] * (i % 3)} for i in range(6)]
    for task, instruction in (("retrieval", "search relevant passage"), ("classification", "given text")):
        whole, aux = Collator(e.tokenizer, e.config, 128, 128, 2, seed=3)(task, records, instruction)
        parts = [Collator(e.tokenizer, e.config, 128, 128, 2, seed=3)(task, records, instruction, part=slice(a, b))
                 for a, b in ((0, 2), (2, 6))]
        texts = [e.tokenizer.batch_decode(g["input_ids"], skip_special_tokens=True) for g in whole]
        joined = [sum((e.tokenizer.batch_decode(p[0][k]["input_ids"], skip_special_tokens=True) for p in parts
                       if p[0][k]["input_ids"].shape[0]), []) for k in range(3)]
        assert texts == joined, task
        n = lambda text: len(e.tokenizer(text)["input_ids"])  # noqa: E731
        fmt = e.config.format_query
        assert whole[0]["attention_mask"].sum(1).tolist() == [n(fmt(r["query"], instruction)) for r in records]
        symmetric = task == "classification"  # documents carry the instruction only for symmetric tasks
        for r, count in zip(records, whole[1]["attention_mask"].sum(1).tolist()):
            assert count in {n(fmt(p, instruction) if symmetric else p) for p in r["pos"]}, (task, r)
        if symmetric:
            assert torch.equal(aux["labels"], torch.cat([p[1]["labels"] for p in parts]))


def test_merge_pays_counts_padded_tokens():
    def g(rows, width):
        return {"input_ids": torch.zeros(rows, width, dtype=torch.long)}

    # 8×20 + 16×22 = 512 separate; merged 24×22 = 528 <= 1.1 × 512 -> merge
    assert merge_pays([g(8, 20), g(16, 22)])
    # 8×10 + 16×40 = 720 separate; merged 24×40 = 960 > 792 -> keep apart
    assert not merge_pays([g(8, 10), g(16, 40)])
    assert merge_pays([g(8, 10), g(16, 40)], slack=0.4)  # 960 <= 1008
    assert merge_pays([g(8, 20), g(0, 1), g(8, 20)])  # an empty group costs nothing


def test_instruction_lists_pick_one_wording_per_record(base_dirs):
    """A list of instructions: each record gets one wording (checked by decoding the tokenized query), every wording
    is used, a record keeps its wording across calls and processes, and STS puts the record's one wording on both
    texts. A record's own instruction wins over the dataset's."""
    e = Embedder.load(base_dirs["qwen2"], dtype="float32", device="cpu", attention="bidirectional", pooling="mean")
    wordings = ["Find the passage", "Retrieve text that answers this", "Given a question, retrieve answers"]
    records = [{"query": f"question number {i}", "pos": [sent(i)]} for i in range(40)]
    records[5]["instruction"] = "Own wording"
    col = Collator(e.tokenizer, e.config, 64, 64, 0)
    dec = lambda g: e.tokenizer.batch_decode(g["input_ids"], skip_special_tokens=True)  # noqa: E731
    fmt = lambda text, w: dec(e.tokenizer([e.config.format_query(text, w)]))[0]  # as the tiny vocabulary spells it  # noqa: E731
    seen = []
    for r, text in zip(records, dec(col("retrieval", records, wordings)[0][0])):
        used = [w for w in wordings + ["Own wording"] if text == fmt(r["query"], w)]
        assert len(used) == 1, text
        seen.append(used[0])
    assert seen[5] == "Own wording" and set(seen) == set(wordings) | {"Own wording"}
    again = dec(col("retrieval", records[10:20], wordings, part=slice(2, 7))[0][0])
    assert again == [fmt(r["query"], w) for r, w in zip(records[12:17], seen[12:17])]
    pairs = [{"text1": f"sentence {i}", "text2": f"other {i}", "score": 1.0} for i in range(12)]
    a, b = (dec(g) for g in col("sts", pairs, wordings)[0])
    for p, x, y in zip(pairs, a, b):
        w = [w for w in wordings if x == fmt(p["text1"], w)]
        assert len(w) == 1 and y == fmt(p["text2"], w[0])


def test_recipe_refuses_empty_instruction_lists(tmp_path):
    from qzhou.training.recipe import load_recipe
    (tmp_path / "r.yaml").write_text(
        "model: {base: x}\ndatasets: [{name: a, path: a.jsonl, task: retrieval, instruction: []}]\n"
        "stages: [{name: s, datasets: [a], steps: 1}]\n")
    with pytest.raises(ValueError, match="instruction"):
        load_recipe(tmp_path / "r.yaml")
    ok = load_recipe(tmp_path / "r.yaml", ["datasets.0.instruction=[one, two]"])
    assert ok.datasets[0].instruction == ["one", "two"]


def test_length_runs_is_the_cheapest_cut():
    """Against every way to cut the rows (sorted by length) into at most `most` contiguous runs."""
    rng = random.Random(0)

    def cost(runs, lengths, overhead):
        return sum(len(r) * max(lengths[i] for i in r) + overhead for r in runs)

    for _ in range(60):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 9))]
        most, overhead = rng.randint(1, 4), rng.choice([0, 16, 64])
        runs = length_runs(lengths, most, overhead)
        assert sorted(i for r in runs for i in r) == list(range(len(lengths))) and 1 <= len(runs) <= most
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], lengths, overhead)
                   for k in range(min(most, len(order)))
                   for cuts in itertools.combinations(range(1, len(order)), k))
        assert cost(runs, lengths, overhead) == best, (lengths, most, overhead)


@pytest.mark.parametrize("arch,attention,pooling", [("qwen2", "bidirectional", "mean"), ("qwen3", "causal", "last"),
                                                    ("bert", None, "cls")])
def test_embedding_in_length_runs_equals_one_forward(base_dirs, arch, attention, pooling):
    """Embeddings and parameter gradients equal one forward over the padded batch (left and right padding)."""
    e = Embedder.load(base_dirs[arch], dtype="float32", device="cpu",
                      **{k: v for k, v in (("attention", attention), ("pooling", pooling)) if v})
    e.eval()
    texts = [sent(i, n) for i, n in enumerate([1, 9, 2, 14, 3, 3, 20, 1, 6])]
    batch = e.tokenizer(texts, padding=True, return_tensors="pt")
    batch = merge_groups([{k: batch[k] for k in ("input_ids", "attention_mask")},
                          e.tokenizer(["x " * 30], return_tensors="pt")], e.config.padding_side,
                         e.tokenizer.pad_token_id)  # one wide row, then drop it: all-pad columns to cut
    batch = {k: v[:-1] for k, v in batch.items()}
    calls = []

    def forward(b):
        calls.append(b["input_ids"].shape)
        return e(b["input_ids"], b["attention_mask"])

    weights = torch.randn(len(texts), e.hidden_size)
    plain = e(batch["input_ids"], batch["attention_mask"])
    (plain * weights).sum().backward()
    want = [None if p.grad is None else p.grad.clone() for p in e.parameters()]  # (BERT's pooler: unused)
    e.zero_grad()
    got = embed_in_runs(forward, batch, e.config.padding_side, most=3)
    (got * weights).sum().backward()
    torch.testing.assert_close(got, plain, atol=2e-5, rtol=1e-4)
    for g, w in zip((p.grad for p in e.parameters()), want):
        assert (g is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    assert len(calls) == 3 and sum(r * w for r, w in calls) < batch["input_ids"].numel() / 2
