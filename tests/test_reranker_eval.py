"""Two-stage evaluation (qzhou.evaluation.rerank): the first stage scores as `evaluate` does, the reranked run is the
top-k reordered by the reranker's log-odds (checked against a brute-force loop), runs are reused, and an oracle
reranker lifts nDCG@10."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_support import BagOfWords, write_tasks
from reranker_support import write_causal

from qzhou import Reranker
from qzhou.evaluation import metrics
from qzhou.evaluation.rerank import evaluate_rerank, save_rerank_report
from qzhou.evaluation.runner import evaluate
from qzhou.evaluation.tasks import load_task, resolve_tasks


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    return Reranker.load(write_causal(tmp_path_factory.mktemp("rre") / "qwen3"), dtype="float32")


class Oracle:
    """Knows the qrels: log-odds 5 for a relevant document, -5 otherwise; logs the pairs it sees."""

    def __init__(self, task):
        data = task.data
        self.relevant = {(data.queries[q], data.docs[d]) for q, docs in data.qrels.items() for d, r in docs.items()
                         if r > 0}
        self.pairs: list[tuple[str, str]] = []

    def score(self, pairs, instruction=None, return_logits=False, **_):
        self.pairs += pairs
        z = np.array([5.0 if tuple(p) in self.relevant else -5.0 for p in pairs])
        return 1 / (1 + np.exp(-z)), z

    def info(self):
        return {"architecture": "Oracle"}


def test_first_stage_matches_evaluate_and_rerank_matches_brute_force(tasks, reranker, tmp_path):
    embedder = BagOfWords()
    k = 5
    first, second = evaluate_rerank(embedder, reranker, [tasks["Retrieval"], tasks["Reranking"]], top_k=k,
                                    runs_dir=tmp_path / "runs", log=lambda _: None)
    plain = evaluate(BagOfWords(), [tasks["Retrieval"], tasks["Reranking"]], log=lambda _: None)
    for a, b in zip(first.tasks, plain.tasks):
        assert a.scores == pytest.approx(b.scores, abs=1e-9)
    # brute force: per query, the embedder's top k re-sorted by one-by-one reranker scores
    task = load_task(resolve_tasks([str(tasks["Retrieval"])])[0])
    data = task.data
    stored = json.loads((tmp_path / "runs" / "TinyRetrieval.json").read_text())["run"]
    instruction = task.spec.instruction_for("query", "qzhou")
    run = {}
    for qid, docs in stored.items():
        order = sorted(docs, key=lambda d: (docs[d], d), reverse=True)
        head, rest = order[:k], order[k:]
        z = {d: float(reranker.score([(data.queries[qid], data.docs[d])], instruction=instruction,
                                     return_logits=True)[1][0]) for d in head}
        ranked_docs = sorted(head, key=lambda d: -z[d]) + rest
        run[qid] = {d: float(len(ranked_docs) - i) for i, d in enumerate(ranked_docs)}
    expected = metrics.retrieval_scores(run, data.qrels)
    assert second.tasks[0].scores == pytest.approx(expected, abs=1e-6)
    assert second.tasks[0].protocol["pairs"] == k * len(stored)


def test_first_stage_run_is_reused(tasks, tmp_path):
    runs = tmp_path / "runs"
    task = load_task(resolve_tasks([str(tasks["Retrieval"])])[0])
    evaluate_rerank(BagOfWords(), Oracle(task), [tasks["Retrieval"]], top_k=3, runs_dir=runs, log=lambda _: None)

    class Refuses(BagOfWords):
        def encode(self, texts, instruction=None, **_):
            raise AssertionError("the stored first-stage run should have been reused")

    first, _ = evaluate_rerank(Refuses(), Oracle(task), [tasks["Retrieval"]], top_k=3, runs_dir=runs,
                               log=lambda _: None)
    assert first.tasks[0].protocol["first_stage_run"] == "reused"
    again, _ = evaluate_rerank(BagOfWords(), Oracle(task), [tasks["Retrieval"]], rules="none", top_k=3,
                               runs_dir=runs, log=lambda _: None)  # other rules: another first stage
    assert again.tasks[0].protocol["first_stage_run"] == "computed"


def test_oracle_reranker_lifts_ndcg(tasks, tmp_path):
    task = load_task(resolve_tasks([str(tasks["Retrieval"])])[0])
    oracle = Oracle(task)
    first, second = evaluate_rerank(BagOfWords(noise=2.0), oracle, [tasks["Retrieval"]], top_k=24,
                                    runs_dir=tmp_path / "runs", log=lambda _: None)
    before, after = first.tasks[0].scores, second.tasks[0].scores
    # the whole corpus is reranked: the relevant documents come first (two queries share a text, so each of
    # them also gets the other's relevant document up front: at most 3 per query)
    assert after["recall_at_3"] == pytest.approx(1.0) and before["recall_at_3"] < 1.0
    assert after["ndcg_at_10"] > before["ndcg_at_10"]
    assert after["recall_at_1000"] == pytest.approx(before["recall_at_1000"])
    assert len(oracle.pairs) == 24 * len(task.data.qrels)
    paths = save_rerank_report(first, second, tmp_path / "report")
    table = paths["markdown"].read_text()
    assert "first stage" in table and "reranked top-24" in table and "TinyRetrieval" in table
    assert (tmp_path / "report" / "reranked" / "results.json").is_file()


def test_non_retrieval_tasks_are_skipped_and_none_left_is_an_error(tasks, tmp_path):
    logged = []
    task = load_task(resolve_tasks([str(tasks["Retrieval"])])[0])
    first, _ = evaluate_rerank(BagOfWords(), Oracle(task), [tasks["STS"], tasks["Retrieval"]], top_k=3,
                               runs_dir=tmp_path / "runs", log=logged.append)
    assert [t.name for t in first.tasks] == ["TinyRetrieval"]
    assert any("TinySTS" in m and "skipped" in m for m in logged)
    with pytest.raises(ValueError, match="nothing to rerank"):
        evaluate_rerank(BagOfWords(), Oracle(task), [tasks["STS"]], runs_dir=tmp_path / "runs", log=logged.append)


def test_cli_eval_rerank(tasks, reranker, tmp_path, monkeypatch):
    import qzhou
    from qzhou.cli import main

    monkeypatch.setattr(qzhou.Embedder, "load", classmethod(lambda cls, *a, **k: BagOfWords()))
    saved = reranker.save(tmp_path / "rr")
    out = tmp_path / "eval"
    assert main(["eval", "bow", "--rerank", str(saved), "--rerank-top-k", "4", "--tasks", str(tasks["Retrieval"]),
                 "--out", str(out), "--dtype", "float32"]) == 0
    assert (out / "rerank.md").is_file() and (out / "runs" / "TinyRetrieval.json").is_file()
    data = json.loads((out / "reranked" / "results.json").read_text())
    assert data["model"]["top_k"] == 4 and data["model"]["first_stage"] == "bow"
