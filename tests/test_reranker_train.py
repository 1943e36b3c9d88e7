"""Reranker training: the point-wise and list-wise losses against brute-force loops (values and gradients), and
`qzhou train` with `task: reranker` on the tiny model: the loss on the training data goes down, a killed run resumes
to exactly the weights of an uninterrupted one, and the output folder opens as Reranker and CrossEncoder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from reranker_support import write_causal
from test_trainer import killed_and_resumed

from qzhou import Reranker
from qzhou.training.objectives.reranker import listwise_loss, pointwise_loss
from qzhou.training.recipe import load_recipe
from qzhou.training.trainer import train


def test_pointwise_loss_equals_brute_force():
    torch.manual_seed(0)
    logits = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 0, 0, 1, 0, 0, 1])
    ours = pointwise_loss(logits.float(), labels)
    ref = 0
    for i in range(7):  # −log p(label) with p = softmax over [no, yes], written out
        z_no, z_yes = logits[i, 0], logits[i, 1]
        chosen = z_yes if labels[i] == 1 else z_no
        ref = ref - (chosen - torch.log(torch.exp(z_no) + torch.exp(z_yes)))
    ref = ref / 7
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    g_ours, = torch.autograd.grad(ours, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-5)


def test_listwise_loss_equals_brute_force_with_uneven_negatives():
    torch.manual_seed(1)
    pos = torch.randn(3, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(5, dtype=torch.float64, requires_grad=True)
    counts = torch.tensor([2, 0, 3])
    ours = listwise_loss(pos.float(), neg.float(), counts)
    ref, start = 0, 0
    for i, c in enumerate(counts.tolist()):
        group = [pos[i]] + [neg[start + j] for j in range(c)]
        start += c
        ref = ref - (group[0] - torch.log(sum(torch.exp(x) for x in group)))
    ref = ref / 3
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    assert ours.item() > 0 and math.isfinite(ours.item())
    for ours_in, ref_in in ((pos, pos), (neg, neg)):
        g_ours, = torch.autograd.grad(listwise_loss(pos.float(), neg.float(), counts), ours_in)
        g_ref, = torch.autograd.grad(ref, ref_in, retain_graph=True)
        torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="neg_counts"):
        listwise_loss(pos, neg, torch.tensor([1, 1, 1]))


# ------------------------------------------------------------------------------------------------ training
TOPICS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital and largest city of France.",
          "Music, art, science and math help us learn.", "A cat sleeps in the house by the river."]
QUERIES = ["quick fox", "capital of France", "music and art", "cat in the house"]


def records() -> list[dict]:
    out = []
    for i in range(12):
        t = i % 4
        out.append({"query": QUERIES[t], "pos": [TOPICS[t]], "neg": [TOPICS[(t + 1) % 4], TOPICS[(t + 2) % 4]]})
    return out


def recipe(tmp_path: Path, base: Path, task: str = "reranker", **extra) -> Path:
    data = tmp_path / "data" / "rr.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(json.dumps(r) for r in records()) + "\n")
    raw = {"model": {"base": str(base)},
           "datasets": [{"name": "rr", "path": "data/rr.jsonl", "task": task, "batch_size": 4,
                         "instruction": "Given a query, retrieve relevant passages"}],
           "stages": [{"name": "stage1", "datasets": ["rr"], "steps": 8, "lr": 1e-3}],
           "output_dir": str(tmp_path / "out"), "hard_negatives": 2, "query_max_length": 16,
           "passage_max_length": 32, "log_every": 2, "log_with": "none", **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def data_loss(folder: Path) -> float:
    """The point-wise loss over every (query, document) pair of the training data, from the saved model."""
    r = Reranker.load(folder, dtype="float32")
    pairs = [(x["query"], d) for x in records() for d in x["pos"] + x["neg"]]
    labels = np.array([1.0 if d in x["pos"] else 0.0 for x in records() for d in x["pos"] + x["neg"]])
    p = r.score(pairs, instruction="Given a query, retrieve relevant passages")
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def weights(folder: Path) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in Reranker.load(folder, dtype="float32").parameters()])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_causal(tmp_path_factory.mktemp("rrt") / "qwen3")


@pytest.mark.parametrize("task", ["reranker", "reranker-listwise"])
def test_training_lowers_the_loss(tmp_path, base, task):
    final = train(load_recipe(recipe(tmp_path, base, task)))
    assert data_loss(final) < data_loss(base) - 0.05
    from sentence_transformers.cross_encoder import CrossEncoder

    pairs = [(QUERIES[0], TOPICS[0]), (QUERIES[0], TOPICS[1])]
    np.testing.assert_allclose(CrossEncoder(str(final), device="cpu").predict(pairs),
                               Reranker.load(final, dtype="float32").score(pairs), atol=1e-5)
    lines = [json.loads(x) for x in (tmp_path / "out" / "stage1" / "losses.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and all(line["task"] == task for line in lines)


def test_exact_resume_after_interruption(tmp_path, base, monkeypatch):
    expected = weights(train(load_recipe(recipe(tmp_path / "a", base, checkpoint_every=4))))
    resumed = weights(killed_and_resumed(recipe(tmp_path / "b", base, checkpoint_every=4), monkeypatch, "stage1", 4))
    assert not torch.allclose(expected, weights(base), atol=1e-4)  # training moved the weights
    assert torch.allclose(resumed, expected, atol=1e-6)


def test_embedder_settings_are_refused(tmp_path, base):
    cfg = load_recipe(recipe(tmp_path, base, model={"base": str(base), "pooling": "mean"}))
    with pytest.raises(ValueError, match="embedder settings"):
        train(cfg)
