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


def test_fuse_rrf_matches_hand_computation():
    from qzhou.evaluation.rerank import fuse_rrf

    first = {"q": {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0}}
    reranked = {"q": {"c": 9.0, "a": 5.0, "b": -1.0}}  # the reranker's log-odds of the top 3: c, a, b
    fused = fuse_rrf(first, reranked, k=3)["q"]
    expected = {"a": 1 / 61 + 1 / 62, "b": 1 / 62 + 1 / 63, "c": 1 / 63 + 1 / 61}
    for doc, value in expected.items():
        assert fused[doc] == pytest.approx(value, abs=1e-15)
    assert metrics.ranked(fused) == ["a", "c", "b", "d"]  # d, below the top 3, stays last


class Refuses:
    def score(self, *_, **__):
        raise AssertionError("the stored reranker run should have been reused")

    def info(self):
        return {"architecture": "Refuses"}


def test_rrf_fusion_matches_brute_force_and_reranker_run_is_reused(tasks, tmp_path):
    task = load_task(resolve_tasks([str(tasks["Retrieval"])])[0])
    source = tmp_path / "oracle-model"  # a folder, so the reranker has a content fingerprint and its run is kept
    source.mkdir()
    (source / "weights.bin").write_bytes(b"oracle")
    runs, k = tmp_path / "runs", 6
    kw = dict(top_k=k, runs_dir=runs, reranker_source=source, log=lambda _: None)
    _, plain = evaluate_rerank(BagOfWords(noise=2.0), Oracle(task), [tasks["Retrieval"]], **kw)
    assert plain.tasks[0].protocol["reranker_run"] == "computed"
    _, fused = evaluate_rerank(BagOfWords(noise=2.0), Refuses(), [tasks["Retrieval"]], fusion="rrf", **kw)
    assert fused.tasks[0].protocol["reranker_run"] == "reused" and fused.model["fusion"] == "rrf"
    # brute force: ranks in the stored first stage and by the oracle's log-odds, 1/(60 + rank) summed
    first = json.loads((runs / "TinyRetrieval.json").read_text())["run"]
    oracle = Oracle(task)
    data = task.data
    run = {}
    for qid, docs in first.items():
        order = sorted(docs, key=lambda d: (docs[d], d), reverse=True)
        z = {d: oracle.score([(data.queries[qid], data.docs[d])])[1][0] for d in order[:k]}
        by_z = sorted(order[:k], key=lambda d: (z[d], d), reverse=True)
        fused_score = {d: 1 / (60 + order.index(d) + 1) + 1 / (60 + by_z.index(d) + 1) for d in order[:k]}
        ranked_docs = sorted(order[:k], key=lambda d: (fused_score[d], d), reverse=True) + order[k:]
        run[qid] = {d: float(len(ranked_docs) - i) for i, d in enumerate(ranked_docs)}
    assert fused.tasks[0].scores == pytest.approx(metrics.retrieval_scores(run, data.qrels), abs=1e-9)
    # another top-k is another reranker run; an in-memory reranker (no source) keeps none
    _, other = evaluate_rerank(BagOfWords(noise=2.0), Oracle(task), [tasks["Retrieval"]], top_k=4, runs_dir=runs,
                               reranker_source=source, log=lambda _: None)
    assert other.tasks[0].protocol["reranker_run"] == "computed"
    _, unkept = evaluate_rerank(BagOfWords(noise=2.0), Oracle(task), [tasks["Retrieval"]], top_k=4, runs_dir=runs,
                                log=lambda _: None)
    assert unkept.tasks[0].protocol["reranker_run"] == "not kept"
    with pytest.raises(ValueError, match="--rerank-fusion must be one of none, rrf"):
        evaluate_rerank(BagOfWords(), Oracle(task), [tasks["Retrieval"]], fusion="max", runs_dir=runs)


@pytest.mark.parametrize("argv, message", [
    (["--rerank-fusion", "rrf"], "--rerank-fusion applies to two-stage evaluation"),
    (["--rerank", "rr", "--rerank-fusion", "rrf", "--mteb", "SciFact"], "applies to local --tasks only"),
])
def test_cli_rerank_fusion_flag_errors(argv, message, tasks, capsys):
    from qzhou.cli import main

    assert main(["eval", "bow", "--tasks", str(tasks["Retrieval"]), *argv]) != 0
    assert message in capsys.readouterr().err
