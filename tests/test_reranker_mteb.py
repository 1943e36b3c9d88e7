"""The Reranker under mteb (CrossEncoderProtocol): mteb's own retrieval protocol, reranking a local task's first-stage
run, gives the scores `evaluate_rerank` reports; and the hub path (embedder predictions saved, tasks converted to
reranking) runs end to end on injected local data."""

from __future__ import annotations

import json

import pytest
from eval_support import BagOfWords, write_tasks
from reranker_support import write_causal

from qzhou import Reranker
from qzhou.evaluation.rerank import evaluate_rerank
from qzhou.evaluation.tasks import load_task, resolve_tasks

mteb_rerank = pytest.importorskip("qzhou.evaluation.mteb_rerank", reason="mteb is not installed (qzhou[eval])")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mr")
    tasks = write_tasks(root / "tasks")
    return tasks, Reranker.load(write_causal(root / "qwen3"), dtype="float32"), root


def test_mteb_scores_equal_evaluate_rerank(setup):
    tasks, reranker, root = setup
    k = 12  # >= 10: the @10 metrics see the same documents in both (mteb keeps only the reranked top-k)
    _, second = evaluate_rerank(BagOfWords(), reranker, [tasks["Retrieval"]], top_k=k, runs_dir=root / "runs",
                                log=lambda _: None)
    task = load_task(resolve_tasks([str(tasks["Retrieval"])])[0])
    first = json.loads((root / "runs" / "TinyRetrieval.json").read_text())["run"]
    theirs = mteb_rerank.mteb_rerank_scores(reranker, task, first, k)
    ours = second.tasks[0].scores
    for key in ("ndcg_at_10", "map_at_10", "mrr_at_10", "recall_at_10", "precision_at_5", "ndcg_at_1"):
        assert theirs[key] == pytest.approx(ours[key], abs=1e-5), key


def test_hub_path_on_injected_tasks(setup, tmp_path, monkeypatch):
    """`run_mteb_rerank` with mteb's task lookup answered by local data: first-stage predictions are written, the
    task is converted to a top-k reranking and the reranker gets that task's published instruction."""
    tasks, reranker, _ = setup
    from qzhou.evaluation.mteb_adapter import inject

    loaded = load_task(resolve_tasks([str(tasks["Retrieval"])])[0])
    monkeypatch.setattr(mteb_rerank, "get_mteb_tasks",
                        lambda names: [inject(mteb_rerank.mteb.get_task("SciFact"), loaded)])
    seen = []
    real = mteb_rerank.QzhouMtebReranker.predict

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        seen.extend(self.calls)
        return out

    monkeypatch.setattr(mteb_rerank.QzhouMtebReranker, "predict", spy)
    first, second = mteb_rerank.run_mteb_rerank(BagOfWords(), reranker, ["SciFact"], top_k=5, out=tmp_path)
    assert list((tmp_path / "predictions").glob("*SciFact*"))
    assert first.tasks[0].name == second.tasks[0].name == "SciFact"
    assert sum(n for _, _, n in seen) == 5 * len(loaded.data.qrels)
    from qzhou.evaluation.mteb_adapter import QzhouMtebModel  # the embedder's query-side instruction for the task

    expected = QzhouMtebModel(BagOfWords()).instruction(mteb_rerank.mteb.get_task("SciFact").metadata,
                                                        mteb_rerank.PromptType.query)
    assert expected and {instr for _, instr, _ in seen} == {expected}
    assert second.model["top_k"] == 5
