"""Does the trained reranker improve on its first stage? (issue 11's quality benchmark)

The first stage: the bench-cpu embedder (`qzhou train configs/bench-cpu.yaml` -> out/bench-cpu/stage2-all-tasks/
final). The reranker: `qzhou train configs/reranker-bench-cpu.yaml` (SmolLM2-135M, point-wise yes/no loss) ->
out/reranker-bench-cpu/sft/final. Tasks: CISI (Retrieval, 1,460 abstracts) and TrecQA (Reranking, each question's
candidate sentences) from ../shared/data. The reranker reorders each query's first-stage top-k (100, as Qwen3
evaluated); documents below keep their first-stage order (`qzhou.evaluation.rerank`).

Contenders, scored in one run on one first-stage candidate list (computed once, reused from OUT/runs):
- the first stage alone (the baseline);
- the trained reranker over its top-k;
- the same reranker's scores fused with the first stage's ranks (reciprocal rank fusion, `--rerank-fusion rrf`; no
  second scoring pass: the reranker's run is read back from OUT/runs/reranked);
- with `--untrained`, the base model as a reranker (same template, no training): what training added;
- with `--also LABEL=DIR` (repeatable), other trained rerankers (another recipe), alone and fused.
Every stage's run is kept under OUT/runs, so adding a contender later scores only that contender.

Target (issue 11): reranked nDCG@10 above the first stage on both tasks, by >= 3 points on at least one.
Written: OUT/rerank_quality.{json,md,png} (+ each contender's results.json under OUT/).

Run:  python bench/rerank_quality.py [--embedder DIR] [--reranker DIR] [--top-k 100] [--max-length 512]
                                     [--untrained] [--also LABEL=DIR ...] [--tasks CISI TrecQA]
                                     [--out bench/results/rerank_quality]
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_GAIN = 3.0  # nDCG@10 points on at least one task
TRAINED = "reranked (trained)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--embedder", default=str(REPO / "out/bench-cpu/stage2-all-tasks/final"))
    p.add_argument("--reranker", default=str(REPO / "out/reranker-bench-cpu/sft/final"))
    p.add_argument("--tasks", nargs="+", default=["CISI", "TrecQA"])
    p.add_argument("--top-k", type=int, default=100, help="first-stage documents reranked per query")
    p.add_argument("--max-length", type=int, default=512,
                   help="reranker prompt cap in tokens (only the document is cut); CISI abstracts run to ~700")
    p.add_argument("--untrained", action="store_true", help="also rerank with the base model, untrained")
    p.add_argument("--also", action="append", default=[], metavar="LABEL=DIR",
                   help="another trained reranker to compare (alone and fused), e.g. lora=out/reranker-lora/sft/final")
    p.add_argument("--rules", default="qzhou", choices=["qzhou", "qwen3", "none"],
                   help="instruction rules for both stages (none: no instruction for the embedder, the reranker's "
                        "default instruction; right for embedders trained without instructions, e.g. all-MiniLM)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=str(REPO / "bench/results/rerank_quality"))
    return p.parse_args(argv)


def check_inputs(a: argparse.Namespace) -> None:
    for what, folder, recipe in (("embedder", a.embedder, "configs/bench-cpu.yaml"),
                                 ("reranker", a.reranker, "configs/reranker-bench-cpu.yaml")):
        if not Path(folder).is_dir():
            sys.exit(f"rerank_quality: no {what} at {folder}; train it first: bash bench/prepare_cpu_data.sh && "
                     f"qzhou train {recipe}")


def also(a: argparse.Namespace) -> list[tuple[str, str]]:
    out = []
    for item in a.also:
        label, sep, folder = item.partition("=")
        if not sep or not label or not Path(folder).is_dir():
            sys.exit(f"rerank_quality: --also {item!r}: expected LABEL=DIR with a reranker folder")
        out.append((label, folder))
    return out


def ndcg10(results) -> dict[str, float]:
    return {t.name: round(100 * t.scores["ndcg_at_10"], 2) for t in results.tasks}


def summary(first, contenders: dict[str, object]) -> dict:
    """Per task: nDCG@10 and the main score of each contender, and the issue's target check for the trained one."""
    base = ndcg10(first)
    table = {"first stage": {"ndcg_at_10": base, "main": {t.name: round(100 * t.scores[t.main_score], 2)
                                                          for t in first.tasks}}}
    for label, res in contenders.items():
        table[label] = {"ndcg_at_10": ndcg10(res),
                        "main": {t.name: round(100 * t.scores[t.main_score], 2) for t in res.tasks}}
    gains = {label: {name: round(row["ndcg_at_10"][name] - base[name], 2) for name in base}
             for label, row in table.items() if label != "first stage"}
    met = {label: all(g > 0 for g in g_.values()) and any(g >= TARGET_GAIN for g in g_.values())
           for label, g_ in gains.items()}
    return {"table": table, "gains_ndcg_at_10": gains[TRAINED], "target_met": met[TRAINED],
            "gains_by_contender": gains, "target_met_by_contender": met,
            "main_scores": {t.name: t.main_score for t in first.tasks}}


def markdown(s: dict, top_k: int) -> str:
    names = list(s["gains_ndcg_at_10"])
    other = [n for n in names if s["main_scores"][n] != "ndcg_at_10"]  # a second column where the main score differs
    lines = ["| contender | " + " | ".join([f"{n} nDCG@10" for n in names] + [f"{n} {s['main_scores'][n]}"
                                                                             for n in other]) + " |",
             "|---|" + "---:|" * (len(names) + len(other))]
    for label, row in s["table"].items():
        lines.append(f"| {label} | " + " | ".join([f"{row['ndcg_at_10'][n]:.2f}" for n in names]
                                                   + [f"{row['main'][n]:.2f}" for n in other]) + " |")
    lines.append("")
    for label, by_task in s["gains_by_contender"].items():
        gains = ", ".join(f"{n} {g:+.2f}" for n, g in by_task.items())
        met = "met" if s["target_met_by_contender"][label] else "NOT met"
        lines.append(f"{label}, top-{top_k}: nDCG@10 {gains} points over the first stage; target (above on both, "
                     f">= {TARGET_GAIN:g} on one) {met}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    check_inputs(a)
    from qzhou import Embedder, Reranker
    from qzhou.default_model import smollm2_folder
    from qzhou.evaluation.report import plot
    from qzhou.evaluation.rerank import FUSIONS, evaluate_rerank

    out = Path(a.out)
    embedder = Embedder.load(a.embedder, dtype=a.dtype)
    # (label, folder, fusions): trained rerankers alone and fused; the untrained base alone
    contenders = [(TRAINED, a.reranker, FUSIONS)] + [(f"reranked ({label})", folder, FUSIONS)
                                                     for label, folder in also(a)]
    if a.untrained:
        contenders.append(("reranked (untrained base)", smollm2_folder(), ("none",)))
    first, results = None, {}
    for label, source, fusions in contenders:
        reranker = Reranker.load(source, dtype=a.dtype, max_length=a.max_length)
        print(f"\n{label}: {source} ({reranker.dtype}, max_length {reranker.max_length})", flush=True)
        for fusion in fusions:
            name = label if fusion == "none" else f"{label} + RRF with the first stage"
            first, results[name] = evaluate_rerank(embedder, reranker, a.tasks, a.rules, top_k=a.top_k,
                                                   fusion=fusion, data_root=a.data_root, runs_dir=out / "runs",
                                                   embedder_source=a.embedder, reranker_source=str(source),
                                                   show_progress=True)  # rrf reuses the reranker's stored run
            results[name].save(out / name.replace(" ", "-").replace("(", "").replace(")", ""))
        del reranker
    first.save(out / "first-stage")
    s = summary(first, results)
    s |= {"embedder": a.embedder, "reranker": a.reranker, "top_k": a.top_k, "max_length": a.max_length, "rules": a.rules,
          "dtype": a.dtype, "load_average": os.getloadavg()}
    table = markdown(s, a.top_k)
    (out / "rerank_quality.json").write_text(json.dumps(s, indent=2) + "\n", encoding="utf-8")
    (out / "rerank_quality.md").write_text(table, encoding="utf-8")
    plot([first, *results.values()], out / "rerank_quality.png", ["first stage", *results])
    print("\n" + table + f"wrote {out}/rerank_quality.{{json,md,png}}")


if __name__ == "__main__":
    main()
