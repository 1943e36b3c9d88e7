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
    first, second = mteb_rerank.run_mteb_rerank(BagOfWords(), reranker, ["SciFact"], top_k=5, runs_dir=tmp_path,
                                                log=lambda _: None)
    assert [p.name for p in (tmp_path / "mteb").glob("*/predictions/*")] == ["SciFact_predictions.json"]
    assert first.tasks[0].name == second.tasks[0].name == "SciFact"
    assert sum(n for _, _, n in seen) == 5 * len(loaded.data.qrels)
    from qzhou.evaluation.mteb_adapter import QzhouMtebModel  # the embedder's query-side instruction for the task

    expected = QzhouMtebModel(BagOfWords()).instruction(mteb_rerank.mteb.get_task("SciFact").metadata,
                                                        mteb_rerank.PromptType.query)
    assert expected and {instr for _, instr, _ in seen} == {expected}
    assert second.model["top_k"] == 5
    assert first.tasks[0].protocol["first_stage_run"] == "computed"
    assert first.tasks[0].main_score == "ndcg_at_10" and "recall_at_100" in first.tasks[0].scores


# ------------------------------------------------------------------------------------ qzhou eval --mteb --rerank
def _eval(*args: str) -> int:
    from qzhou.cli import main

    return main(["eval", *args, "--dtype", "float32"])


def _inject_scifact(monkeypatch, tasks):
    """mteb's task lookup answered by the local retrieval task under SciFact's name (nothing is downloaded)."""
    from qzhou.evaluation.mteb_adapter import inject

    loaded = load_task(resolve_tasks([str(tasks["Retrieval"])])[0])
    monkeypatch.setattr(mteb_rerank, "get_mteb_tasks",
                        lambda names: [inject(mteb_rerank.mteb.get_task("SciFact"), loaded)])
    return loaded


class Refuses(BagOfWords):
    def encode(self, texts, instruction=None, **_):
        raise AssertionError("the saved first-stage predictions should have been reused")


def test_cli_mteb_rerank_equals_local_rerank_and_reuses_the_first_stage(setup, tmp_path, monkeypatch):
    """`--mteb --rerank` on the local task (as SciFact) gives the local `--rerank` path's and `mteb_rerank_scores`'
    reranked scores (rules none: the same instructions on both paths; k >= 10 so the @10 metrics see the same
    documents); a second run reads the saved predictions without calling the embedder."""
    import qzhou

    tasks, reranker, _ = setup
    loaded = _inject_scifact(monkeypatch, tasks)
    saved = str(reranker.save(tmp_path / "rr"))
    embedders = iter([BagOfWords(), BagOfWords(), Refuses()])
    monkeypatch.setattr(qzhou.Embedder, "load", classmethod(lambda cls, *a, **k: next(embedders)))
    common = ["bow", "--rerank", saved, "--rerank-top-k", "12", "--rules", "none"]
    assert _eval(*common, "--tasks", str(tasks["Retrieval"]), "--out", str(tmp_path / "local")) == 0
    assert _eval(*common, "--mteb", "SciFact", "--out", str(tmp_path / "mteb")) == 0
    local = json.loads((tmp_path / "local" / "reranked" / "results.json").read_text())["tasks"][0]["scores"]
    ours = json.loads((tmp_path / "mteb" / "reranked" / "results.json").read_text())
    assert ours["model"]["top_k"] == 12 and ours["model"]["first_stage"] == "bow"
    run = json.loads((tmp_path / "local" / "runs" / "TinyRetrieval.json").read_text())["run"]
    theirs = mteb_rerank.mteb_rerank_scores(reranker, loaded, run, 12, rules="none")
    for key in ("ndcg_at_10", "map_at_10", "mrr_at_10", "recall_at_10", "precision_at_5", "ndcg_at_1"):
        assert ours["tasks"][0]["scores"][key] == pytest.approx(local[key], abs=1e-5), key
        assert ours["tasks"][0]["scores"][key] == pytest.approx(theirs[key], abs=1e-5), key
    first = json.loads((tmp_path / "mteb" / "first_stage" / "results.json").read_text())["tasks"][0]
    assert first["protocol"]["first_stage_run"] == "computed"
    assert "reranked top-12" in (tmp_path / "mteb" / "rerank.md").read_text()
    assert (tmp_path / "mteb" / "rerank.png").is_file()

    runs = tmp_path / "mteb" / "runs"  # (mteb's result cache stores scores rounded: compared to 1e-5)
    assert _eval(*common, "--mteb", "SciFact", "--out", str(tmp_path / "again"), "--first-stage-runs", str(runs)) == 0
    again = json.loads((tmp_path / "again" / "first_stage" / "results.json").read_text())["tasks"][0]
    assert again["protocol"]["first_stage_run"] == "reused" and again["scores"] == pytest.approx(first["scores"], abs=1e-5)
    second = json.loads((tmp_path / "again" / "reranked" / "results.json").read_text())["tasks"][0]["scores"]
    assert second == pytest.approx(ours["tasks"][0]["scores"], abs=1e-5)


def test_another_rule_set_or_a_lost_predictions_file_recomputes(setup, tmp_path, monkeypatch):
    tasks, reranker, _ = setup
    _inject_scifact(monkeypatch, tasks)
    embedder = BagOfWords()
    for rules in ("none", "qzhou"):
        first, _ = mteb_rerank.run_mteb_rerank(embedder, reranker, ["SciFact"], rules, top_k=3, runs_dir=tmp_path,
                                               log=lambda _: None)
        assert first.tasks[0].protocol["first_stage_run"] == "computed", rules
    assert len(list((tmp_path / "mteb").glob("*/predictions/SciFact_predictions.json"))) == 2
    for path in (tmp_path / "mteb").glob("*-qzhou/predictions/*"):
        path.unlink()
    first, _ = mteb_rerank.run_mteb_rerank(embedder, reranker, ["SciFact"], "qzhou", top_k=3, runs_dir=tmp_path,
                                           log=lambda _: None)
    assert first.tasks[0].protocol["first_stage_run"] == "computed"


@pytest.mark.parametrize("args, message", [
    (["--tasks", "x.yaml", "--rerank-top-k", "5"], "--rerank-top-k applies to two-stage evaluation: add --rerank"),
    (["--mteb", "SciFact", "--first-stage-runs", "runs"], "--first-stage-runs applies to two-stage evaluation"),
    (["--mteb", "SciFact", "--rerank", "rr", "--rerank-top-k", "0"], "--rerank-top-k must be a positive number"),
    (["--rerank", "rr"], "nothing to evaluate"),
])
def test_bad_flag_combinations_are_one_line_errors(args, message, capsys, monkeypatch):
    import qzhou

    monkeypatch.setattr(qzhou.Embedder, "load", classmethod(lambda cls, *a, **k: pytest.fail("loaded the model")))
    assert _eval("bow", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("qzhou eval: error:")


def test_mteb_rerank_without_a_retrieval_task_is_an_error(setup, tmp_path, monkeypatch):
    tasks, reranker, _ = setup
    from qzhou.evaluation.mteb_adapter import inject

    loaded = load_task(resolve_tasks([str(tasks["STS"])])[0])
    monkeypatch.setattr(mteb_rerank, "get_mteb_tasks",
                        lambda names: [inject(mteb_rerank.mteb.get_task("STSBenchmark"), loaded)])
    logged = []
    with pytest.raises(ValueError, match="STSBenchmark: none is .* Retrieval task; nothing to rerank"):
        mteb_rerank.run_mteb_rerank(BagOfWords(), reranker, ["STSBenchmark"], runs_dir=tmp_path, log=logged.append)
    assert any("STSBenchmark" in m and "skipped" in m for m in logged)
