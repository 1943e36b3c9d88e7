"""Does merging a run's checkpoints beat its last checkpoint? (issue 12's quality benchmark)

Given the checkpoints of one training stage in training order (e.g. the bench-cpu recipe with
`--set stages.1.checkpoint_every=25 --set stages.1.keep_checkpoints=8`), score on the dev tasks:
- every checkpoint (the last one is the baseline),
- chained slerp over all of them (equal shares, training order), multislerp and linear (uniform) averages,
- the greedy soup (`search_merge`, inputs ranked by their own score),
and write one table (JSON + markdown + PNG) with each merge's share of tensors that fell back to linear (slerp,
multislerp) and the share with cosine > 0.9995 (which mergekit would have averaged). Each model is scored once.

Run:  python bench/merge_quality.py CKPT [CKPT ...] [--tasks STSBenchmark SICK-R Banking77 CISI]
                                    [--data-root DIR] [--out bench/results/merge_quality.json] [--label NAME]
CKPT: model folders, or training checkpoints holding model/ (out/RUN/STAGE/checkpoint-N).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = ["STSBenchmark", "SICK-R", "Banking77", "CISI"]


def cached(score):
    """Score each folder once (search_merge scores the inputs again)."""
    seen: dict[str, dict[str, float]] = {}

    def run(folder: Path) -> dict[str, float]:
        key = str(Path(folder).resolve())
        if key not in seen:
            start = time.perf_counter()
            seen[key] = score(Path(folder))
            print(f"  scored {folder} in {time.perf_counter() - start:.0f}s: {seen[key]}", file=sys.stderr)
        return seen[key]

    return run


def merge_rows(paths: list[Path], score, work: Path) -> list[dict]:
    from qzhou.merging.driver import merge_checkpoints

    rows = []
    for method in ("slerp", "multislerp", "linear"):
        out = work / method
        report = merge_checkpoints(paths, method, out=out, show_progress=False, hash_files=False)
        scores = score(out)
        row = {"name": f"{method} (all {len(paths)})", "kind": "merge", "scores": scores}
        if method != "linear":  # linear computes no angles
            row.update({"fallback_share": report.fallback_count / report.tensors,
                        "cos_above_0.9995_share": report.above_mergekit_dot / report.tensors,
                        "min_cosine": report.min_cosine})
        rows.append(row)
    return rows


def table(rows: list[dict], tasks: list[str]) -> str:
    lines = ["| model | " + " | ".join(tasks) + " | mean | linear fallbacks | cos > 0.9995 |",
             "|---|" + "---:|" * (len(tasks) + 3)]
    for r in rows:
        cells = " | ".join(f"{100 * r['scores'][t]:.2f}" for t in tasks)
        fb = f"{100 * r['fallback_share']:.1f} %" if "fallback_share" in r else ""
        cos = f"{100 * r['cos_above_0.9995_share']:.1f} %" if "cos_above_0.9995_share" in r else ""
        lines.append(f"| {r['name']} | {cells} | {100 * r['mean']:.2f} | {fb} | {cos} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 0.45 * len(rows) + 1.6))
    means = [100 * r["mean"] for r in rows]
    colors = [{"checkpoint": "tab:blue", "merge": "tab:green"}.get(r["kind"], "tab:gray") for r in rows]
    ax.barh(range(len(rows)), means, color=colors)
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(min(means) - 1, max(means) + 0.5)
    ax.axvline(means[[i for i, r in enumerate(rows) if r["kind"] == "checkpoint"][-1]], color="tab:red",
               linestyle="--", label="last checkpoint")
    ax.set_xlabel("dev mean x 100 (blue: checkpoints, green: merges, gray: soup = one checkpoint)")
    ax.legend(fontsize=8)
    ax.set_title(textwrap.fill(title, 100), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--tasks", nargs="+", default=SUITE)
    p.add_argument("--data-root", default=None)
    p.add_argument("--rules", default="qzhou")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--label", default="", help="what the checkpoints are (run, recipe, steps), for the table")
    p.add_argument("--out", default=str(REPO / "bench/results/merge_quality.json"))
    args = p.parse_args()
    from qzhou.merging.inputs import model_folder
    from qzhou.merging.search import eval_scorer, search_merge

    paths = [model_folder(Path(c)) for c in args.checkpoints]
    names = [Path(c).name for c in args.checkpoints]
    score = cached(eval_scorer(args.tasks, args.rules, args.data_root, args.dtype))
    rows = [{"name": n, "kind": "checkpoint", "scores": score(p)} for n, p in zip(names, paths)]
    with tempfile.TemporaryDirectory(prefix="merge-quality-") as tmp:
        rows += merge_rows(paths, score, Path(tmp))
        soup = search_merge(paths, args.tasks, out=Path(tmp) / "soup", strategy="greedy", scorer=score)
        best = soup.best()
        if best.kind == "merge":
            rows.append({"name": f"greedy soup: {best.name}", "kind": "merge", "scores": best.scores})
        else:  # no average improved on the best checkpoint: the soup is that checkpoint, not a merge
            rows.append({"name": f"greedy soup = {best.name} alone (every addition rejected)", "kind": "selection",
                         "scores": best.scores})
    tasks = list(rows[0]["scores"])
    for r in rows:
        r["mean"] = sum(r["scores"].values()) / len(r["scores"])
    last = rows[len(paths) - 1]
    best_merge = max((r for r in rows if r["kind"] == "merge"), key=lambda r: r["mean"])
    verdict = {"last_checkpoint": last["name"], "last_mean": last["mean"], "best_merge": best_merge["name"],
               "best_merge_mean": best_merge["mean"], "delta_points": 100 * (best_merge["mean"] - last["mean"]),
               "target_met": best_merge["mean"] > last["mean"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = table(rows, tasks)
    out.write_text(json.dumps({"label": args.label, "tasks": tasks, "rows": rows, "verdict": verdict,
                               "soup_trials": soup.to_dict()["rows"]}, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)
    plot(rows, out.with_suffix(".png"), f"merge vs last checkpoint: {args.label}")
    print(md)
    print(f"best merge {best_merge['name']}: {100 * best_merge['mean']:.2f} vs last checkpoint "
          f"{100 * last['mean']:.2f} ({verdict['delta_points']:+.2f} points); wrote {out}, .md, .png")


if __name__ == "__main__":
    main()
