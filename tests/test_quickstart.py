"""`qzhou quickstart` end to end on a tiny model standing in for SmolLM2: evaluate, train with the shipped
quickstart recipe (shortened), evaluate again, report and picture."""

from __future__ import annotations

import json

import pytest
import torch

from qzhou import Embedder, quickstart
from qzhou.cli import main


@pytest.fixture
def tiny_default(monkeypatch, base_dirs):
    import qzhou.default_model

    monkeypatch.setattr(qzhou.default_model, "smollm2_folder", lambda: base_dirs["llama"])
    monkeypatch.setattr(quickstart, "smollm2_folder", lambda: base_dirs["llama"])


def test_sample_task_is_judged_and_unseen():
    corpus, queries = quickstart.sample_task()
    ids = {c["id"] for c in corpus}
    assert len(queries) >= 16 and all(set(q["relevant"]) <= ids and q["relevant"] for q in queries)
    train_texts = set()
    for name in ("retrieval", "sts", "classification"):
        for line in quickstart.resource(f"quickstart/{name}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for key in ("query", "text", "text1", "text2", "pos", "neg"):
                value = row.get(key, [])
                train_texts.update([value] if isinstance(value, str) else value)
    assert len(train_texts) > 100
    assert not train_texts & ({q["query"] for q in queries} | {c["text"] for c in corpus})


def test_quickstart_trains_evaluates_and_searches(tmp_path, tiny_default, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--set", "stages.0.steps=2", "--set", "stages.1.steps=2",
                 "--set", "precision=fp32", "--threads", "1", "--no-reranker"]) == 0  # the reranker: its own test
    printed = capsys.readouterr()
    report = json.loads((out / "quickstart.json").read_text())
    untrained_row = "| untrained | " + " | ".join(f"{v:.1f}" for v in report["before"]["scores"].values()) + " |"
    # the untrained scores are printed as soon as they exist, before training starts; then both rows at the end
    assert printed.out.index(untrained_row) < printed.out.index("[3/4] training") < printed.out.rindex(untrained_row)
    assert "[1/4] loading SmolLM2-135M as an embedder (1 torch thread(s))" in printed.out
    assert quickstart.LEGEND in printed.out and "stage1-retrieval: 100%" in printed.err  # the trainer's bar
    assert (out / "quickstart.png").stat().st_size > 1000
    assert (out / "train" / "stage2-all-tasks" / "final" / "modules.json").is_file()
    for key in ("before", "after"):
        result = report[key]
        searches = result["searches"]
        assert len(searches) == len(quickstart.sample_task()[1])
        for s in searches:
            scores = [h["score"] for h in s["hits"]]
            assert scores == sorted(scores, reverse=True) and len(scores) == 3
        # top-1 from the printed hits, independently of the metric code
        top1 = 100 * sum(s["hits"][0]["id"] in s["relevant"] for s in searches) / len(searches)
        assert result["scores"]["top-1"] == pytest.approx(top1, abs=0.01)
        # MRR from the shown top-3 (a relevant passage ranked lower adds at most 1/4), one relevant passage each
        ranks = [next((r for r, h in enumerate(s["hits"], 1) if h["id"] in s["relevant"]), None) for s in searches]
        known = sum(1 / r for r in ranks if r) / len(ranks)
        unseen = sum(r is None for r in ranks) / len(ranks)
        assert 100 * known - 0.01 <= result["scores"]["MRR@10"] <= 100 * (known + unseen / 4) + 0.01
        assert result["scores"]["top-1"] <= result["scores"]["MRR@10"] <= result["scores"]["nDCG@10"] + 0.01
    # the second evaluation is of the trained model: other weights, other scores
    assert [h["score"] for s in report["before"]["searches"] for h in s["hits"]] != \
        [h["score"] for s in report["after"]["searches"] for h in s["hits"]]
    trained = Embedder.load(report["train"]["model"], dtype="float32")
    base = Embedder.load(quickstart.smollm2_folder(), dtype="float32")
    assert any(not torch.equal(a, b) for a, b in zip(trained.backbone.parameters(), base.backbone.parameters()))


def test_quickstart_without_training(tmp_path, tiny_default):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--no-train"]) == 0
    report = json.loads((out / "quickstart.json").read_text())
    assert set(report) == {"before"} and (out / "quickstart.png").is_file()


def test_a_bad_override_fails_before_any_work(tmp_path, tiny_default, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--set", "stages.0.steps=-1"]) == 2
    assert "stages.0.steps = -1: must be >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_threads_follow_the_free_cores(monkeypatch):
    monkeypatch.setattr(quickstart.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(quickstart.os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    before = torch.get_num_threads()
    try:
        assert quickstart.choose_threads(None) == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(quickstart.os, "getloadavg", lambda: (0.6, 0.0, 0.0))  # a finished job's lagging load
        assert quickstart.choose_threads(None) == 2
        monkeypatch.setattr(quickstart.os, "getloadavg", lambda: (1.0, 0.0, 0.0))  # one core held
        assert quickstart.choose_threads(None) == 1
        monkeypatch.setattr(quickstart.os, "getloadavg", lambda: (3.5, 0.0, 0.0))  # others hold both cores
        assert quickstart.choose_threads(None) == 1 and torch.get_num_threads() == 1
        assert quickstart.choose_threads(2) == 2
    finally:
        torch.set_num_threads(before)
