"""The reranker step of `qzhou quickstart`: on a tiny causal LM standing in for SmolLM2 (fast) and on the real model
(slow). The reranked lists are checked against the first stage's top 10 (a permutation of it), against the saved
reranker's own scores (the order) and against nDCG / MRR / top-1 computed here by hand from the lists."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from reranker_support import write_causal

from qzhou import Reranker, quickstart, quickstart_reranker
from qzhou.cli import main

FAST = ["--set", "stages.0.steps=1", "--set", "stages.1.steps=1", "--set", "precision=fp32", "--threads", "1",
        "--reranker-set", "stages.0.steps=3", "--reranker-set", "stages.0.lr=1e-3", "--reranker-set", "precision=fp32"]


@pytest.fixture(scope="module")
def causal_base(tmp_path_factory):
    """A tiny Llama *ForCausalLM whose tokenizer has single "yes" / "no" tokens: an embedder and a reranker."""
    return write_causal(tmp_path_factory.mktemp("qsr") / "llama", arch="llama", tie=True)


@pytest.fixture
def tiny_default(monkeypatch, causal_base):
    import qzhou.default_model

    monkeypatch.setattr(qzhou.default_model, "smollm2_folder", lambda: causal_base)
    monkeypatch.setattr(quickstart, "smollm2_folder", lambda: causal_base)


def by_hand(searches: list[dict]) -> dict:
    """nDCG@10, MRR@10 and top-1 (x100) of ranked id lists with binary relevance, from the textbook formulas."""
    ndcg = mrr = top1 = 0.0
    for s in searches:
        rel = set(s["relevant"])
        ranked = s["ranked"][:10]
        dcg = sum(1 / math.log2(r + 1) for r, d in enumerate(ranked, 1) if d in rel)
        ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(rel), 10) + 1))
        ndcg += dcg / ideal
        mrr += next((1 / r for r, d in enumerate(ranked, 1) if d in rel), 0.0)
        top1 += bool(ranked) and ranked[0] in rel
    n = len(searches)
    return {"nDCG@10": 100 * ndcg / n, "MRR@10": 100 * mrr / n, "top-1": 100 * top1 / n}


def check_reranked(first: dict, result: dict, k: int) -> None:
    """`result` reorders exactly `first`'s top 10 of each query; its shown hits are its head; scores by hand."""
    assert len(result["searches"]) == len(first["searches"]) == len(quickstart.sample_task()[1])
    for a, b in zip(first["searches"], result["searches"]):
        assert a["query"] == b["query"] and len(a["ranked"]) == quickstart_reranker.DEPTH
        assert sorted(b["ranked"]) == sorted(a["ranked"]) and len(set(b["ranked"])) == len(b["ranked"])
        assert [h["id"] for h in b["hits"]] == b["ranked"][:k]
    for name, value in by_hand(result["searches"]).items():
        assert result["scores"][name] == pytest.approx(value, abs=0.01), name


def test_quickstart_reranks_the_embedders_top_10(tmp_path, tiny_default, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr()
    report = json.loads((out / "quickstart.json").read_text())
    rr = report["reranker"]
    assert set(rr) >= {"recipe", "model", "minutes", "step_minutes", "depth", "untrained", "trained"}
    for key in ("untrained", "trained"):
        check_reranked(report["after"], rr[key], 3)
    check_reranked(report["after"], report["after"], 3)  # the first stage's own lists score as its metrics say
    # the trained reranker's order is its own score order: rescore the pairs with the saved model
    corpus = {c["id"]: c["text"] for c in quickstart.sample_task()[0]}
    s = rr["trained"]["searches"][0]
    z = Reranker.load(rr["model"], dtype="float32").score(
        [(s["query"], corpus[d]) for d in s["ranked"]], instruction=quickstart.INSTRUCTION, return_logits=True)[1]
    assert np.all(np.diff(z) <= 1e-6)
    assert [h["score"] for h in s["hits"]] == pytest.approx(
        [float(1 / (1 + np.exp(-x))) for x in z[:3]], abs=1e-4)
    trained = Reranker.load(rr["model"], dtype="float32")
    base = Reranker.load(quickstart.smollm2_folder(), dtype="float32")
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters()))
    assert "[5/7] reranking the trained embedder's top 10 with the untrained" in printed.out
    assert "[6/7] training with reranker-cpu.yaml: reranker 3 steps" in printed.out
    assert "reranker: 100%" in printed.err  # the trainer's bar of the reranker stage
    assert "| + trained reranker | " in printed.out and quickstart_reranker.LEGEND in printed.out
    assert printed.out.count("  reranked:") == 4
    assert (out / "quickstart.png").stat().st_size > 1000


def test_no_reranker_flag_skips_the_step(tmp_path, tiny_default, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), *FAST, "--no-reranker"]) == 0
    printed = capsys.readouterr().out
    assert "[4/4] scoring the trained embedder" in printed and "[5/" not in printed
    assert "trained reranker" not in printed and "reranked:" not in printed
    assert set(json.loads((out / "quickstart.json").read_text())) == {"before", "train", "after"}
    assert not (out / "reranker-train").exists()


def test_a_bad_reranker_override_fails_before_any_work(tmp_path, tiny_default, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--reranker-set", "stages.0.steps=0"]) == 2
    assert "stages.0.steps = 0: must be >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_shipped_reranker_recipe_trains_on_the_retrieval_sample():
    cfg = quickstart_reranker.load_config([])
    assert [d.task for d in cfg.datasets] == ["reranker-listwise"] and cfg.model.gradient_checkpointing
    assert cfg.lora is not None and cfg.lora.r == 16  # the 3 GB peak-RSS budget of the quickstart
    assert cfg.datasets[0].instruction == quickstart.INSTRUCTION  # the prompt the quickstart reranks with
    assert cfg.datasets[0].path.name == "retrieval.jsonl"  # test_quickstart checks it holds no sample-task text


@pytest.mark.slow
def test_real_quickstart_reranker_step(tmp_path):
    """The shipped quickstart on SmolLM2-135M (minutes): the report's structure and the reranked permutations."""
    from qzhou.default_model import smollm2_folder

    try:
        smollm2_folder()
    except FileNotFoundError as e:
        pytest.skip(f"bundled model unavailable: {e}")
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out)]) == 0
    report = json.loads((out / "quickstart.json").read_text())
    assert set(report) == {"before", "train", "after", "reranker"}
    for key in ("untrained", "trained"):
        check_reranked(report["after"], report["reranker"][key], 3)
    assert (out / "reranker-train" / "reranker" / "final" / "qzhou_reranker.json").is_file()
