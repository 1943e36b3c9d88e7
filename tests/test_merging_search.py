"""Evaluation-guided merging: the greedy soup's decisions against a hand-worked table of scores, and the grid
search end to end through `qzhou merge --search` with the real evaluation runner on a tiny STS task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eval_support import write_tasks
from safetensors.torch import load_file

from qzhou import Embedder
from qzhou.cli import main
from qzhou.evaluation.runner import evaluate
from qzhou.merging.search import search_merge


@pytest.fixture(scope="module")
def folders(base_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("search-inputs")
    out = {}
    for name, seed in (("A", 1), ("B", 2), ("C", 3)):
        e = Embedder.load(base_dirs["qwen2"], dtype="float32", attention="bidirectional", pooling="mean")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in e.backbone.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        out[name] = e.save(root / name)
    return out


def test_greedy_soup_follows_the_rule(folders, tmp_path):
    """Inputs score A .50, B .70, C .60, so the order is B, C, A. soup(B+C) scores .65 < .70: rejected;
    soup(B+A) scores .75 > .70: accepted. The chosen model is the B+A average."""
    table = {("A",): 0.50, ("B",): 0.70, ("C",): 0.60, ("B", "C"): 0.65, ("A", "B"): 0.75}
    seen = []

    def scorer(folder: Path) -> dict[str, float]:
        lineage = folder / "merge.json"
        members = [Path(i["path"]).name for i in json.loads(lineage.read_text())["inputs"]] if lineage.is_file() \
            else [folder.name]
        seen.append(tuple(members))
        return {"dev": table[tuple(sorted(members))]}

    out = tmp_path / "soup"
    report = search_merge([folders["A"], folders["B"], folders["C"]], ["dev"], out=out, scorer=scorer)
    assert seen == [("A",), ("B",), ("C",), ("B", "C"), ("B", "A")]
    assert [r.accepted for r in report.rows] == [None, None, None, False, True]
    assert report.chosen == "soup(B + A)"
    got, a, b = (load_file(str(p / "model.safetensors")) for p in (out, folders["A"], folders["B"]))
    for k in got:
        torch.testing.assert_close(got[k], (a[k] + b[k]) / 2)
    saved = json.loads((out / "merge_search.json").read_text())
    assert saved["chosen"] == "soup(B + A)" and [r["mean"] for r in saved["rows"]] == [.5, .7, .6, .65, .75]
    assert "**soup(B + A)** (chosen) accepted" in (out / "merge_search.md").read_text()
    assert (out / "merge_search.png").stat().st_size > 0


def test_grid_search_end_to_end_with_the_evaluation_runner(folders, tmp_path):
    task = write_tasks(tmp_path / "tasks")["STS"]
    out = tmp_path / "grid"
    assert main(["merge", str(folders["A"]), str(folders["B"]), "--search", "--strategy", "grid", "--grid", "0.5",
                 "--dev-tasks", str(task), "--out", str(out)]) == 0
    saved = json.loads((out / "merge_search.json").read_text())
    rows = {r["name"]: r for r in saved["rows"]}
    for name in ("A", "B"):  # the inputs' scores are what `evaluate` gives each folder on its own
        direct = evaluate(Embedder.load(folders[name], dtype="float32"), [task], log=lambda _: None)
        assert rows[name]["scores"]["TinySTS"] == pytest.approx(direct.tasks[0].main, abs=1e-6)
    assert len(saved["rows"]) == 3 and saved["rows"][2]["weights"] == [0.5, 0.5]
    best = max(saved["rows"], key=lambda r: r["mean"])
    assert saved["chosen"] == best["name"]
    assert (out / "merge.json").is_file() and Embedder.load(out).info()["pooling"] == "mean"


def test_search_arguments_are_checked(folders, tmp_path, capsys):
    assert main(["merge", str(folders["A"]), str(folders["B"]), "--search", "--out", str(tmp_path / "x")]) == 2
    assert "--search needs --dev-tasks" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least two"):
        search_merge([folders["A"]], ["dev"], out=tmp_path / "y", scorer=lambda f: {"dev": 1.0})
