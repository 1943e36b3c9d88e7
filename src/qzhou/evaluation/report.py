"""Results and reports: a JSON file that says exactly what was run (model, revision, config, pooling, attention,
instruction rules, per-task instructions, data checksums, library versions, scores), a markdown table with
Mean(Task) and Mean(TaskType), a bar chart, and a side-by-side comparison of several result files.

Published embedding scores are notoriously hard to reproduce because instructions, versions and pooling drift
silently; every one of those is written next to the number it produced.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PACKAGES = ("qzhou", "torch", "transformers", "sentence-transformers", "numpy", "scipy", "scikit-learn",
            "faiss-cpu", "mteb", "pytrec-eval-terrier")
RESULTS_FORMAT = 1
MODEL_FILES = (".json", ".safetensors", ".bin", ".gguf", ".model", ".txt", ".pt")


@dataclass
class TaskResult:
    name: str
    type: str
    main_score: str
    scores: dict[str, float]  # 0-1, as mteb stores them
    size: int  # pairs, test texts or judged queries
    split: str = "test"
    language: str | None = None
    seconds: float = 0.0
    texts_embedded: int = 0
    instructions: dict[str, str | None] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    files: dict[str, str] = field(default_factory=dict)

    @property
    def main(self) -> float:
        return self.scores[self.main_score]


@dataclass
class Results:
    model: dict[str, Any]
    rules: str
    versions: dict[str, str | None]
    tasks: list[TaskResult]
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def main_scores(self) -> dict[str, float]:
        """Task -> main score x 100 (the leaderboard's scale)."""
        return {t.name: 100 * t.main for t in self.tasks}

    def type_means(self, names: set[str] | None = None) -> dict[str, float]:
        by_type: dict[str, list[float]] = {}
        for t in self.tasks:
            if names is None or t.name in names:
                by_type.setdefault(t.type, []).append(100 * t.main)
        return {k: sum(v) / len(v) for k, v in by_type.items()}

    def mean_task(self, names: set[str] | None = None) -> float:
        scores = [s for n, s in self.main_scores().items() if names is None or n in names]
        return sum(scores) / len(scores)

    def mean_type(self, names: set[str] | None = None) -> float:
        """MTEB's Mean(TaskType): the mean of the per-type means."""
        means = self.type_means(names)
        return sum(means.values()) / len(means)

    def to_dict(self) -> dict[str, Any]:
        return {"format": RESULTS_FORMAT, "created": self.created, "model": self.model, "rules": self.rules,
                "versions": self.versions, "mean_task": self.mean_task(), "mean_type": self.mean_type(),
                "type_means": self.type_means(), "tasks": [asdict(t) for t in self.tasks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        tasks = [TaskResult(**t) for t in data["tasks"]]
        return cls(model=data["model"], rules=data["rules"], versions=data["versions"], tasks=tasks,
                   created=data.get("created", ""))

    @classmethod
    def load(cls, path: str | Path) -> Results:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such results file (qzhou eval writes results.json in --out)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_dict(data)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a qzhou eval results file ({type(e).__name__}: {e})") from None

    def save(self, out: str | Path) -> dict[str, Path]:
        """Write results.json, results.md and results.png into the folder `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "results.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths["markdown"].write_text(markdown(self), encoding="utf-8")
        try:
            plot([self], paths["plot"])
        except ImportError as e:  # the scores matter more than the chart: keep them, say how to get it
            print(f"qzhou eval: no chart written ({e})", file=sys.stderr)
            del paths["plot"]
        return paths


# ------------------------------------------------------------------------------------------------ provenance
def describe_model(embedder: Any, source: str | Path | None = None) -> dict[str, Any]:
    """What was evaluated: name, revision (hub snapshot commit when there is one), a content fingerprint of the
    folder, and the embedder's config (pooling, attention, template...) and runtime info (dtype, size)."""
    info = embedder.info() if callable(getattr(embedder, "info", None)) else {}
    config = getattr(embedder, "config", None)
    config = config.model_dump() if hasattr(config, "model_dump") else {}
    folder = _local_folder(source)
    single = Path(str(source)).expanduser() if source is not None and Path(str(source)).expanduser().is_file() else None
    files = [single] if single else sorted(f for f in folder.rglob("*") if f.is_file()) if folder else []
    return {"name": str(source) if source is not None else info.get("architecture", type(embedder).__name__),
            "revision": _revision(source, folder), "fingerprint": _fingerprint(files, folder) if files else None,
            "pooling": config.get("pooling"), "attention": config.get("attention"), "dtype": info.get("dtype"),
            "device": str(getattr(embedder, "device", "")) or None, "config": config,
            "info": json.loads(json.dumps(info, default=str))}


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _local_folder(source: str | Path | None) -> Path | None:
    if source is None:
        return None
    p = Path(source).expanduser()
    if p.is_file():
        return p.parent
    if p.is_dir():
        return p
    try:  # a hub id: its cached snapshot, without any network access
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), local_files_only=True))
    except Exception:
        return None


def _revision(source: str | Path | None, folder: Path | None) -> str | None:
    m = re.search(r"snapshots/([0-9a-f]{40})", str(folder.resolve()) if folder else str(source or ""))
    return m.group(1) if m else None


def _fingerprint(files: list[Path], folder: Path | None) -> str:
    """sha256 over each model file's name, size, first and last MiB: changes when the weights change, costs
    milliseconds even for a 15 GB checkpoint (hashing it whole would take minutes)."""
    h = hashlib.sha256()
    for f in files:
        if f.name.startswith(".") or f.suffix not in MODEL_FILES:
            continue
        size = f.stat().st_size
        h.update(f"{f.relative_to(folder) if folder and f.is_relative_to(folder) else f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return "sha256:" + h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ tables
def markdown(results: Results) -> str:
    m = results.model
    lines = [f"## qzhou eval: {m['name']}", "",
             f"pooling `{m.get('pooling')}` · attention `{m.get('attention')}` · dtype `{m.get('dtype')}` · "
             f"instructions `{results.rules}` · revision `{m.get('revision') or m.get('fingerprint')}` · "
             f"qzhou {results.versions.get('qzhou')} · {results.created}", "",
             "| Task | Type | Metric | Score |", "|---|---|---|---:|"]
    lines += [f"| {t.name} | {t.type} | {t.main_score} | {100 * t.main:.2f} |" for t in results.tasks]
    lines += [f"| **Mean(Task)** | | | **{results.mean_task():.2f}** |",
              f"| **Mean(TaskType)** | | | **{results.mean_type():.2f}** |", "",
              "| Type | Tasks | Mean |", "|---|---:|---:|"]
    counts = {t: sum(1 for x in results.tasks if x.type == t) for t in results.type_means()}
    lines += [f"| {k} | {counts[k]} | {v:.2f} |" for k, v in results.type_means().items()]
    return "\n".join(lines) + "\n"


def labels_for(runs: Sequence[Results]) -> list[str]:
    """Short distinct column names: the model folder's name, plus the rules when two runs share a model."""
    base = [_short_name(str(r.model.get("name", "?"))) for r in runs]
    names = [f"{b} ({r.rules})" if base.count(b) > 1 else b for b, r in zip(base, runs, strict=True)]
    return [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _short_name(name: str) -> str:
    """A column title: hub ids whole, a hub cache snapshot as its repo id, a generic last folder ("model") with
    its parent, else the folder's name."""
    parts = Path(name.rstrip("/")).parts
    if len(parts) >= 3 and re.fullmatch(r"[0-9a-f]{40}", parts[-1]) and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    if len(parts) > 1 and parts[-1] in ("model", "models", "final", "checkpoint"):
        return "/".join(parts[-2:])
    return name if len(parts) == 2 and not Path(name).exists() else parts[-1]


def compare(runs: Sequence[Results], labels: Sequence[str] | None = None) -> str:
    """Side-by-side markdown: one row per task, one column per run; the means use the tasks every run has."""
    if not runs:
        raise ValueError("compare needs at least one results file")
    labels = list(labels or labels_for(runs))
    order: list[tuple[str, str]] = []
    for r in runs:
        order += [(t.name, t.type) for t in r.tasks if (t.name, t.type) not in order]
    common = set.intersection(*(set(r.main_scores()) for r in runs))
    lines = ["| Task | Type | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(runs)]
    for name, kind in order:
        cells = [f"{r.main_scores()[name]:.2f}" if name in r.main_scores() else "–" for r in runs]
        lines.append(f"| {name}{'' if name in common else ' †'} | {kind} | " + " | ".join(cells) + " |")
    if common:
        for title, fn in (("Mean(Task)", Results.mean_task), ("Mean(TaskType)", Results.mean_type)):
            lines.append(f"| **{title}** | | " + " | ".join(f"**{fn(r, common):.2f}**" for r in runs) + " |")
    notes = ["", "Main scores x 100. Instructions: " + ", ".join(f"{lab}: `{r.rules}`" for lab, r in
                                                              zip(labels, runs, strict=True)) + "."]
    if len(common) < len(order):
        notes.append("† not in every run; the means use only the tasks every run has.")
    return "\n".join(lines + notes) + "\n"


def plot(runs: Sequence[Results], path: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Horizontal bars: main score per task plus Mean(Task) and Mean(TaskType), one colour per run (Agg
    backend through a bare Figure, so no display and no global pyplot state is touched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install qzhou[eval]") from None
    labels = list(labels or labels_for(runs))
    names: list[str] = []
    for r in runs:
        names += [n for n in r.main_scores() if n not in names]
    common = set.intersection(*(set(r.main_scores()) for r in runs))
    rows = names + ["Mean(Task)", "Mean(TaskType)"]
    fig = Figure(figsize=(8, 0.35 * len(rows) * max(1, len(runs)) + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    height = 0.8 / len(runs)
    for j, (r, lab) in enumerate(zip(runs, labels, strict=True)):
        s = r.main_scores()
        values = [s.get(n, 0.0) for n in names] + [r.mean_task(common), r.mean_type(common)]
        ys = [i + j * height for i in range(len(rows))]
        bars = ax.barh(ys, values, height=height, label=lab)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(rows))], rows, fontsize=8)
    ax.axhline(len(names) - 0.1 - height / 2, color="grey", linewidth=0.6)  # tasks above, means below
    ax.invert_yaxis()
    ax.set_title(f"qzhou eval · instructions: {', '.join(sorted({r.rules for r in runs}))}", fontsize=9)
    ax.set_xlim(0, 105)
    ax.set_xlabel("main score x 100")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)
