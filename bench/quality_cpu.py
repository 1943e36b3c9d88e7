"""The training issue's quality table: SmolLM2-135M before and after `configs/bench-cpu.yaml` (bidirectional + mean,
and the same recipe with causal attention + last-token pooling) against all-MiniLM-L6-v2, on STS-B test, SICK-R,
Banking77 and CISI (main scores x 100, mteb's protocols on the shared files), with the target verdict (the trained
model's mean of the four at or above MiniLM's) and a bar chart.

Each row is `LABEL=RESULTS[,RESULTS...]`: results.json files (or folders holding one) written by `qzhou eval`;
several files per row are merged (e.g. a before-run whose CISI was evaluated separately). The row named by
--candidate is checked against the row named by --baseline.

Run (after the evaluations; `qzhou eval ... --out out/eval/NAME` writes each results.json, copied to bench/results/):
  R=bench/results; python bench/quality_cpu.py "all-MiniLM-L6-v2=$R/eval-minilm.json" \
    "SmolLM2 untrained (bidir, mean)=$R/eval-smollm2-untrained-bidir.json,$R/eval-smollm2-untrained-bidir-cisi.json" \
    "SmolLM2 bench-cpu (bidir, mean)=$R/eval-smollm2-bench-cpu-bidir.json" \
    "SmolLM2 untrained (causal, last)=$R/eval-smollm2-untrained-causal.json" \
    "SmolLM2 bench-cpu (causal, last)=$R/eval-smollm2-bench-cpu-causal.json" \
    --baseline all-MiniLM-L6-v2 --candidate "SmolLM2 bench-cpu (bidir, mean)"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qzhou.evaluation.report import Results

TASKS = ["STSBenchmark", "SICK-R", "Banking77Classification", "CISI"]
SHORT = {"STSBenchmark": "STS-B", "SICK-R": "SICK-R", "Banking77Classification": "Banking77", "CISI": "CISI nDCG@10"}


def load_row(spec: str) -> tuple[str, dict[str, float], list[str]]:
    label, _, files = spec.partition("=")
    if not files:
        raise SystemExit(f"{spec!r}: expected LABEL=RESULTS[,RESULTS...]")
    scores: dict[str, float] = {}
    found = []
    for f in files.split(","):
        path = Path(f)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            print(f"warning: {label}: {path} not found (row left incomplete)")
            continue
        found.append(str(path))
        for name, value in Results.load(path).main_scores().items():
            if name in TASKS:
                scores.setdefault(name, value)  # main scores are x 100 already
    return label, scores, found


def plot(rows: list[tuple[str, dict[str, float], list[str]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = TASKS + ["mean"]
    x = np.arange(len(names))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, (label, scores, _) in enumerate(rows):
        values = [scores.get(t, np.nan) for t in TASKS]
        values.append(float(np.mean(values)) if len(scores) == len(TASKS) else np.nan)
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=label)
    ax.set_xticks(x, [SHORT.get(n, n) for n in names])
    ax.set_ylabel("main score x 100")
    ax.set_ylim(0, 100)
    ax.set_title("SmolLM2-135M trained 30 CPU minutes (configs/bench-cpu.yaml) vs all-MiniLM-L6-v2")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="+", help="LABEL=RESULTS[,RESULTS...]")
    ap.add_argument("--baseline", default="all-MiniLM-L6-v2")
    ap.add_argument("--candidate", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/results/quality-cpu"))
    args = ap.parse_args()
    rows = [load_row(spec) for spec in args.rows]
    print("| model | " + " | ".join(SHORT[t] for t in TASKS) + " | mean |")
    print("|---|" + "---:|" * (len(TASKS) + 1))
    means = {}
    for label, scores, _ in rows:
        cells = [f"{scores[t]:.2f}" if t in scores else "–" for t in TASKS]
        mean = sum(scores.values()) / len(TASKS) if len(scores) == len(TASKS) else None
        means[label] = mean
        print(f"| {label} | " + " | ".join(cells) + f" | {'–' if mean is None else f'{mean:.2f}'} |")
    verdict = None
    if args.candidate:
        base, cand = means.get(args.baseline), means.get(args.candidate)
        if base is None or cand is None:
            verdict = f"UNKNOWN - {args.candidate!r} or {args.baseline!r} lacks a score"
        else:
            verdict = (f"{'PASS' if cand >= base else 'FAIL'} - {args.candidate} mean {cand:.2f} vs "
                       f"{args.baseline} {base:.2f} (target: at or above)")
        print("\n" + verdict)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out.with_suffix(".png"))
    args.out.with_suffix(".json").write_text(json.dumps(
        {"tasks": TASKS, "rows": [{"label": label, "scores": scores, "mean": means[label], "files": files}
                                  for label, scores, files in rows], "verdict": verdict}, indent=2) + "\n")
    print(f"\n{args.out.with_suffix('.png')}, {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
