"""Reports (JSON, markdown with Mean(Task) and Mean(TaskType), PNG, compare) and the `qzhou eval` command line."""

from __future__ import annotations

import argparse
import json

import pytest
from eval_support import BagOfWords, write_tasks

from qzhou.evaluation.cli import add_parser, compare_parser
from qzhou.evaluation.report import Results, TaskResult, compare, markdown, plot

pytest.importorskip("matplotlib", reason="matplotlib is in the eval extra (pip install qzhou[eval])")


def fake(name: str, scores: dict[str, tuple[str, float]], rules: str = "qzhou") -> Results:
    tasks = [TaskResult(name=n, type=t, main_score="m", scores={"m": s}, size=1) for n, (t, s) in scores.items()]
    return Results(model={"name": f"/models/{name}", "pooling": "mean", "attention": "bidirectional"}, rules=rules,
                   versions={"qzhou": "0.1.0"}, tasks=tasks)


def test_means_by_hand_and_in_markdown():
    r = fake("a", {"S1": ("STS", 0.8), "S2": ("STS", 0.6), "C1": ("Classification", 0.4)})
    assert r.mean_task() == pytest.approx(60.0)  # (80 + 60 + 40) / 3
    assert r.mean_type() == pytest.approx(55.0)  # (70 + 40) / 2
    md = markdown(r)
    assert "| S1 | STS | m | 80.00 |" in md and "| **Mean(Task)** | | | **60.00** |" in md
    assert "| **Mean(TaskType)** | | | **55.00** |" in md and "| STS | 2 | 70.00 |" in md


def test_json_round_trip_and_files(tmp_path):
    r = fake("a", {"S1": ("STS", 0.8)})
    paths = r.save(tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["mean_task"] == pytest.approx(80.0) and data["tasks"][0]["scores"] == {"m": 0.8}
    back = Results.load(paths["json"])
    assert back.to_dict() == r.to_dict()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a qzhou eval results file"):
        Results.load(tmp_path / "bad.json")


def test_compare_side_by_side_uses_common_tasks_for_means(tmp_path):
    a = fake("a", {"S1": ("STS", 0.8), "C1": ("Classification", 0.4)})
    b = fake("b", {"S1": ("STS", 0.7)}, rules="qwen3")
    table = compare([a, b])
    assert "| Task | Type | a | b |" in table
    assert "| S1 | STS | 80.00 | 70.00 |" in table and "| C1 † | Classification | 40.00 | – |" in table
    assert "| **Mean(Task)** | | **80.00** | **70.00** |" in table and "a: `qzhou`, b: `qwen3`" in table
    assert "a (qzhou)" in compare([a, fake("a", {"S1": ("STS", 0.1)}, rules="qwen3")])
    assert plot([a, b], tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------------ command line
def run(argv: list[str]) -> None:
    if argv[:2] == ["eval", "compare"]:  # routed like qzhou.cli.parse does: `eval compare` has its own parser
        args = compare_parser().parse_args(argv[2:])
    else:
        parser = argparse.ArgumentParser(prog="qzhou")
        add_parser(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
    args.func(args)


@pytest.fixture(scope="module")
def model_dir(base_dirs, tmp_path_factory):
    from qzhou import Embedder

    return Embedder.load(base_dirs["qwen3"], attention="bidirectional", pooling="mean", dtype="float32").save(
        tmp_path_factory.mktemp("cli_eval") / "emb")


def test_cli_eval_writes_reports_and_compares(model_dir, tmp_path, capsys):
    files = write_tasks(tmp_path / "tasks")
    run(["eval", str(model_dir), "--tasks", str(files["STS"]), str(files["Reranking"]), "--out", str(tmp_path / "a"),
         "--dtype", "float32"])
    out = capsys.readouterr().out
    assert "| TinySTS | STS | cosine_spearman |" in out and "Mean(TaskType)" in out
    r = Results.load(tmp_path / "a" / "results.json")
    assert r.model["attention"] == "bidirectional" and r.model["fingerprint"].startswith("sha256:")
    assert r.tasks[1].instructions["document"] == "Given a question, retrieve answers"  # qzhou: reranking symmetric
    run(["eval", str(model_dir), "--tasks", str(tmp_path / "tasks"), "--rules", "none", "--out", str(tmp_path / "b")])
    assert len(Results.load(tmp_path / "b" / "results.json").tasks) == 6  # a folder of YAML files
    capsys.readouterr()
    run(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b" / "results.json"), "--out", str(tmp_path / "c")])
    table = capsys.readouterr().out
    assert "| TinySTS | STS |" in table and "| TinyPairs † |" in table
    assert (tmp_path / "c" / "compare.md").read_text() in table and (tmp_path / "c" / "compare.png").is_file()


@pytest.mark.parametrize("argv, match", [
    (["eval", "m"], "nothing to evaluate: add --tasks suite"),
    (["eval"], "give a MODEL to evaluate"),
    (["eval", "m", "--tasks", "suite", "--instructions", "x.yaml"], "--instructions applies to --mteb"),
])
def test_cli_errors_say_the_fix(argv, match):
    with pytest.raises(ValueError, match=match):
        run(argv)


def test_cli_unknown_task_fails_before_loading_the_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no built-in task of that name"):
        run(["eval", str(tmp_path / "no-model"), "--tasks", "NoSuchTask"])


def test_bag_of_words_helper_is_batch_independent():
    bow = BagOfWords()
    assert (bow.encode(["a b", "c"])[1] == bow.encode(["c"])[0]).all()
