"""`search_merge(paths, dev_tasks, ..., out) -> SearchReport`: evaluation-guided merging.

Every input is scored on a small dev suite (`qzhou.evaluation.evaluate`; task files are read once). Then either
- greedy soup (Wortsman et al., 2022): inputs in order of their own dev mean; each joins the running average only if
  the average's dev mean improves;
- grid: slerp between the two best inputs at each t of the grid (t = 0 is the best, t = 1 the second best).
The best row (an input or a tried merge) is merged into `out` (one input: copied, with merge.json), and the table of
every input and every tried merge is saved as JSON, markdown and a PNG chart beside the weights.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qzhou.merging.driver import SEARCH_REPORT, merge_checkpoints

log = logging.getLogger(__name__)
STRATEGIES = ("greedy", "grid")
REPORT_STEM = SEARCH_REPORT
Scorer = Callable[[Path], dict[str, float]]


@dataclass
class Row:
    """One scored model: an input, or a tried merge (members, method, weights)."""

    name: str
    kind: str  # "input" | "merge"
    members: list[str]
    method: str | None
    weights: list[float] | None
    scores: dict[str, float]
    accepted: bool | None = None  # greedy: whether the trial became the running soup

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores)


@dataclass
class SearchReport:
    strategy: str
    tasks: list[str]
    rows: list[Row] = field(default_factory=list)
    chosen: str | None = None
    merge: dict[str, Any] | None = None

    def best(self) -> Row:
        return max(self.rows, key=lambda r: r.mean)  # the first of equals: inputs come before merges

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "tasks": self.tasks, "chosen": self.chosen,
                "rows": [{**asdict(r), "mean": r.mean} for r in self.rows], "merge": self.merge}

    def markdown(self) -> str:
        names = list(self.rows[0].scores) if self.rows else []
        lines = ["| model | kind | " + " | ".join(names) + " | mean |",
                 "|---|---|" + "---:|" * (len(names) + 1)]
        for r in self.rows:
            label = f"**{r.name}** (chosen)" if r.name == self.chosen else r.name
            if r.accepted is not None:
                label += " accepted" if r.accepted else " rejected"
            cells = " | ".join(f"{100 * r.scores[n]:.2f}" for n in names)
            lines.append(f"| {label} | {r.kind} | {cells} | {100 * r.mean:.2f} |")
        return "\n".join(lines) + "\n"

    def save(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / f"{REPORT_STEM}.json", "md": folder / f"{REPORT_STEM}.md",
                 "png": folder / f"{REPORT_STEM}.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        paths["md"].write_text(self.markdown(), encoding="utf-8")
        self.plot(paths["png"])
        return paths

    def plot(self, path: Path) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("the search chart needs matplotlib: pip install qzhou[eval]") from None
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(self.rows) + 1.2))
        means = [100 * r.mean for r in self.rows]
        colors = ["tab:green" if r.name == self.chosen else "tab:blue" if r.kind == "input" else "tab:gray"
                  for r in self.rows]
        ax.barh(range(len(self.rows)), means, color=colors)
        ax.set_yticks(range(len(self.rows)), [r.name for r in self.rows], fontsize=8)
        ax.invert_yaxis()
        lo = min(means)
        ax.set_xlim(lo - max(1.0, 0.1 * (max(means) - lo + 1)), max(means) + 0.5)
        ax.set_xlabel(f"dev mean ({', '.join(self.tasks)}) x 100; green: chosen, blue: inputs, gray: merges")
        ax.set_title(f"qzhou merge --search ({self.strategy})")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def eval_scorer(dev_tasks: Sequence[str], rules: str = "qzhou", data_root: str | Path | None = None,
                dtype: str = "float32", device: str | None = None) -> Scorer:
    """folder -> {task: main score (0-1)}, with the task files read once for the whole search."""
    from qzhou.evaluation.runner import evaluate
    from qzhou.evaluation.tasks import load_task, resolve_tasks
    from qzhou.modeling.embedder import Embedder

    loaded = [load_task(s) for s in resolve_tasks(list(dev_tasks), data_root)]

    def score(folder: Path) -> dict[str, float]:
        embedder = Embedder.load(folder, dtype=dtype, device=device)
        results = evaluate(embedder, loaded, rules, model_source=folder, log=lambda _: None)
        return {t.name: t.main for t in results.tasks}

    return score


def search_merge(paths: Sequence[str | Path], dev_tasks: Sequence[str], *, out: str | Path,
                 strategy: str = "greedy", method: str | None = None, grid: Sequence[float] = (0.25, 0.5, 0.75),
                 rules: str = "qzhou", data_root: str | Path | None = None, dtype: str = "float32",
                 device: str | None = None, scorer: Scorer | None = None, show_progress: bool = False,
                 **merge_options: Any) -> SearchReport:
    """Score the inputs, try merges (`strategy`), write the best one to `out` with the search table beside it.
    `method`: how candidates are combined (greedy: linear; grid: slerp). `scorer` replaces the dev evaluation."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r}: choose {' or '.join(STRATEGIES)}")
    if len(paths) < 2:
        raise ValueError("--search needs at least two checkpoints to choose between")
    method = method or ("linear" if strategy == "greedy" else "slerp")
    if strategy == "grid" and method not in ("slerp", "multislerp", "linear"):
        raise ValueError(f"--strategy grid interpolates with slerp, multislerp or linear (got --method {method})")
    if strategy == "greedy" and method not in ("linear", "multislerp", "slerp"):
        raise ValueError(f"--strategy greedy averages with linear, multislerp or slerp (got --method {method})")
    score = scorer or eval_scorer(dev_tasks, rules, data_root, dtype, device)
    report = SearchReport(strategy, [str(t) for t in dev_tasks])
    names = _short_names(paths)
    for p, name in zip(paths, names):
        report.rows.append(Row(name, "input", [str(p)], None, None, score(Path(p))))
        _say(f"input {name}: dev mean {100 * report.rows[-1].mean:.2f}")
    ranked = sorted(range(len(paths)), key=lambda i: -report.rows[i].mean)
    with tempfile.TemporaryDirectory(prefix="qzhou-search-") as tmp:
        trial = _trial_runner(Path(tmp), score, show_progress, merge_options)
        if strategy == "greedy":
            _greedy(report, [paths[i] for i in ranked], [names[i] for i in ranked], method, trial)
        else:
            _grid(report, [paths[i] for i in ranked[:2]], [names[i] for i in ranked[:2]], method, grid, trial)
    best = report.best()
    report.chosen = best.name
    merged = merge_checkpoints(best.members, best.method or "linear", out=out, weights=best.weights,
                               show_progress=show_progress, **merge_options)
    report.merge = merged.to_dict()
    paths_out = report.save(Path(out))
    _say(report.markdown() + f"chosen: {best.name}; wrote {out} and {', '.join(str(p) for p in paths_out.values())}")
    return report


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def _short_names(paths: Sequence[str | Path]) -> list[str]:
    """Folder names, made unique with their parent where two match (checkpoint-100/model ...)."""
    names = [Path(p).name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{Path(p).parent.name}/{Path(p).name}" for p in paths]
    return names


def _trial_runner(tmp: Path, score: Scorer, show_progress: bool, options: dict[str, Any]):
    counter = iter(range(1_000_000))

    def run(members: list[str | Path], method: str, weights: list[float]) -> dict[str, float]:
        folder = tmp / f"trial-{next(counter)}"
        merge_checkpoints(members, method, out=folder, weights=weights, show_progress=show_progress,
                          hash_files=False, **options)
        try:
            return score(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return run


def _greedy(report: SearchReport, paths: list, names: list[str], method: str, trial) -> None:
    """Greedy soup: the best input starts the soup; each next input joins if the soup's dev mean improves."""
    soup, soup_names = [paths[0]], [names[0]]
    current = report.rows[[r.name for r in report.rows].index(names[0])].mean
    for p, name in zip(paths[1:], names[1:]):
        members = soup + [p]
        weights = [1.0 / len(members)] * len(members)
        scores = trial(members, method, weights)
        row = Row(f"soup({' + '.join(soup_names + [name])})", "merge", [str(m) for m in members], method, weights,
                  scores)
        row.accepted = row.mean > current
        report.rows.append(row)
        _say(f"{row.name}: dev mean {100 * row.mean:.2f} ({'accepted' if row.accepted else 'rejected'})")
        if row.accepted:
            soup, soup_names, current = members, soup_names + [name], row.mean


def _grid(report: SearchReport, pair: list, names: list[str], method: str, grid: Sequence[float], trial) -> None:
    """slerp (or `method`) between the best and the second best input at each t of the grid."""
    for t in grid:
        if not 0.0 < t < 1.0:
            raise ValueError(f"--grid values lie strictly between 0 and 1 (got {t}); the ends are the inputs")
        weights = [1.0 - t, t]
        scores = trial(pair, method, weights)
        report.rows.append(Row(f"{method}({names[0]}, {names[1]}, t={t:g})", "merge", [str(p) for p in pair],
                               method, weights, scores))
        _say(f"{report.rows[-1].name}: dev mean {100 * report.rows[-1].mean:.2f}")
