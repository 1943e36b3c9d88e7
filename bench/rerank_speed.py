"""Benchmark qzhou's `Reranker.score` against sentence-transformers' `CrossEncoder.predict` on the same model and pairs.

The model: the bundled SmolLM2-135M loaded with `Reranker.load("default")` and saved with `Reranker.save` as a
CrossEncoder folder (LogitScore over the yes/no ids, the Qwen3-Reranker prompt as chat template), so both run the
same weights on the same prompts. Two cases, each against its own baseline measured in the same run:

* "sample": every sample query (src/qzhou/resources) against 3 of the sample documents (16 x 3, short documents);
* "reranking": a few queries x many candidates each, as a second stage sees them: the TREC-QA test questions with
  the most candidate answers (../shared/data/trecqa-wang; without it, the sample corpus joined into varied
  passages).

Contenders (each scores the case's pairs once after a warm-up on 4 pairs, wall time of the call):

* baseline: `CrossEncoder.predict` with its defaults (fp32, batch_size 32);
* `Reranker.score` with dtype="float32" and dtype="auto" (bf16 on CPUs with avx512_bf16 / GPUs), each with the plain
  forward (`prefix_cache=False`) and with prefix KV reuse (the default).

Reported: pairs/s, the ratio to the baseline, the largest |p - p_baseline|, and the share of prompt tokens the
prefix cache did not compute. Target: Reranker.score >= 2x the baseline at scores within 1e-3. Then, in a fresh
process, the peak resident memory of one `Reranker.score` call (auto) for growing numbers of documents of the same
length: flat with the token budget, growing with every document in one batch. A PNG chart of the ratios.

Run:  python bench/rerank_speed.py [--queries 16] [--docs-per-query 3] [--rerank-queries 2] [--rerank-docs 50]
                                   [--memory-docs 8 24 64] [--memory-only] [--json out.json]
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "src" / "qzhou" / "resources"
TRECQA = REPO.parent / "shared" / "data" / "trecqa-wang" / "test.csv"
TARGET_RATIO, TARGET_DIFF = 2.0, 1e-3


def _sample() -> tuple[list[str], list[str]]:
    qs = [json.loads(x)["query"] for x in (RESOURCES / "sample_queries.jsonl").read_text().splitlines()]
    ds = [json.loads(x)["text"] for x in (RESOURCES / "sample_corpus.jsonl").read_text().splitlines()]
    return qs, ds


def sample_pairs(queries: int, docs_per_query: int) -> list[tuple[str, str]]:
    qs, ds = _sample()
    return [(q, ds[(i * docs_per_query + j) % len(ds)]) for i, q in enumerate(qs[:queries]) for j in range(docs_per_query)]


def rerank_pairs(queries: int, docs: int) -> tuple[str, list[tuple[str, str]]]:
    """(description, pairs): the TREC-QA test questions with the most candidates, their first `docs` candidates
    each; without the data, sample queries against passages of 1-3 joined sample documents."""
    if TRECQA.is_file():
        by_question: dict[str, list[str]] = defaultdict(list)
        with TRECQA.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                by_question[row["qtext"]].append(row["atext"])
        top = sorted(by_question, key=lambda q: -len(by_question[q]))[:queries]
        return (f"TREC-QA test, {queries} questions x {docs} candidate answers",
                [(q, a) for q in top for a in by_question[q][:docs]])
    qs, ds = _sample()
    passages = [" ".join(ds[(k + j) % len(ds)] for j in range(1 + k % 3)) for k in range(docs)]
    return (f"sample queries x {docs} passages of 1-3 joined sample documents (TREC-QA absent)",
            [(q, p) for q in qs[:queries] for p in passages])


def timed(fn, pairs) -> tuple[float, np.ndarray]:
    fn(pairs[:4])  # warm-up
    start = time.perf_counter()
    scores = np.asarray(fn(pairs), dtype=np.float64)
    return time.perf_counter() - start, scores


def speed(cases: dict[str, list[tuple[str, str]]], folder: Path) -> list[dict]:
    """One row per (case, contender); ratios against the case's CrossEncoder baseline."""
    from sentence_transformers.cross_encoder import CrossEncoder

    from qzhou import Reranker

    rows = []
    ce = CrossEncoder(str(folder), device="cpu")
    for case, pairs in cases.items():
        seconds, base = timed(partial(ce.predict, batch_size=32), pairs)
        rows.append({"case": case, "contender": "CrossEncoder.predict fp32 (baseline)", "seconds": seconds,
                     "scores": base})
    del ce
    for dtype in ("float32", "auto"):
        r = Reranker.load(folder, dtype=dtype, device="cpu")
        for case, pairs in cases.items():
            for cached in (False, True):
                seconds, s = timed(partial(r.score, prefix_cache=cached), pairs)
                st = r.last_stats
                rows.append({"case": case, "contender": f"Reranker.score {str(r.dtype).removeprefix('torch.')} "
                             + ("prefix-cached" if cached else "plain"), "dtype": dtype, "seconds": seconds,
                             "scores": s, "reused_share": round(st["reused_tokens"] / st["prompt_tokens"], 3),
                             "padding_share": round(1 - st["real_tokens"] / st["computed_tokens"], 3)})
        del r
    base = {row["case"]: row for row in rows if "baseline" in row["contender"]}
    for row in rows:
        b = base[row["case"]]
        row["pairs"] = len(cases[row["case"]])
        row["pairs_per_s"] = round(row["pairs"] / row["seconds"], 2)
        row["ratio"] = round(b["seconds"] / row["seconds"], 2)
        row["max_abs_diff"] = float(np.max(np.abs(row["scores"] - b["scores"])))
    for row in rows:
        del row["scores"]
        row["seconds"] = round(row["seconds"], 2)
    return rows


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    contenders = [c for c in dict.fromkeys(r["contender"] for r in rows) if "baseline" not in c]
    x = np.arange(len(cases))
    width = 0.8 / len(contenders)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, c in enumerate(contenders):
        values = [next((r["ratio"] for r in rows if r["case"] == case and r["contender"] == c), np.nan)
                  for case in cases]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=c)
    ax.axhline(1.0, color="grey", lw=1)
    ax.axhline(TARGET_RATIO, color="red", ls="--", lw=1, label=f"target {TARGET_RATIO}x")
    ax.set_xticks(x, cases)
    ax.set_ylabel("speed x CrossEncoder.predict fp32")
    ax.set_title("Reranker.score vs CrossEncoder.predict, SmolLM2-135M, CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def memory_child(folder: str, counts: list[int], batch_tokens: int) -> None:
    """In a fresh process, for each count of same-length documents: the peak resident memory of one score() call
    over the memory before it (Linux: the peak counter VmHWM is reset through /proc/self/clear_refs), with the
    token budget and, for contrast, with every document in one batch (both prefix-cached, the default)."""
    from qzhou import Reranker

    r = Reranker.load(folder, dtype="auto", device="cpu")
    doc = " ".join(json.loads(x)["text"] for x in (RESOURCES / "sample_corpus.jsonl").read_text().splitlines()[:2])
    r.score([("warm up", "a short document")])
    out = []
    for budget in (batch_tokens, 1 << 30):
        for n in counts:
            pairs = [("What is the capital of France?", f"{i}. {doc}") for i in range(n)]
            before = _status_mib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
            r.score(pairs, batch_tokens=budget)
            out.append({"batch_tokens": budget if budget < 1 << 30 else "all in one batch", "documents": n,
                        "prompt_tokens": r.last_stats["prompt_tokens"] // n,
                        "peak_over_before_mib": round(_status_mib("VmHWM") - before, 1)})
    print(json.dumps({"rows": out}))


def report(rows: list[dict], memory: dict) -> None:
    for case in dict.fromkeys(r["case"] for r in rows):
        first = next(r for r in rows if r["case"] == case)
        print(f"\n{case}: {first['pairs']} pairs, SmolLM2-135M, CPU ({os.cpu_count()} cores)")
        print(f"{'contender':<44}{'s':>8}{'pairs/s':>10}{'x baseline':>12}{'max |dp|':>12}{'reused':>8}")
        for row in (r for r in rows if r["case"] == case):
            print(f"{row['contender']:<44}{row['seconds']:>8}{row['pairs_per_s']:>10}{row['ratio']:>12}"
                  f"{row['max_abs_diff']:>12.2e}{row.get('reused_share', 0):>8.0%}")
    for m in memory.get("rows", []):
        print(f"memory: {m['documents']:>4} documents x {m['prompt_tokens']} tokens, batch_tokens "
              f"{m['batch_tokens']}: peak +{m['peak_over_before_mib']} MiB over the memory before the call")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=16, help="sample case: queries")
    ap.add_argument("--docs-per-query", type=int, default=3, help="sample case: documents per query")
    ap.add_argument("--rerank-queries", type=int, default=2, help="reranking case: queries")
    ap.add_argument("--rerank-docs", type=int, default=50, help="reranking case: candidates per query")
    ap.add_argument("--memory-docs", type=int, nargs="*", default=[8, 24, 64])
    ap.add_argument("--memory-only", action="store_true", help="rerun the memory part; keep --json's speed rows")
    ap.add_argument("--batch-tokens", type=int, default=2048, help="(memory part) Reranker.score's token budget")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "rerank_speed.json"))
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_child:
        return memory_child(a.memory_child, a.memory_docs, a.batch_tokens)
    from qzhou import Reranker

    described, pairs = rerank_pairs(a.rerank_queries, a.rerank_docs)
    cases = {f"sample {a.queries}x{a.docs_per_query}": sample_pairs(a.queries, a.docs_per_query),
             f"reranking {a.rerank_queries}x{a.rerank_docs}": pairs}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Reranker.load("default", dtype="float32").save(Path(tmp) / "smollm2-reranker")
        rows = json.loads(Path(a.json).read_text())["speed"] if a.memory_only else speed(cases, folder)
        memory = {}
        if a.memory_docs:
            done = subprocess.run([sys.executable, __file__, "--memory-child", str(folder), "--batch-tokens",
                                   str(a.batch_tokens), "--memory-docs", *map(str, a.memory_docs)],
                                  capture_output=True, text=True, check=True)
            memory = json.loads(done.stdout.strip().splitlines()[-1])
    report(rows, memory)
    result = {"cases": {name: len(p) for name, p in cases.items()}, "reranking_case": described,
              "model": "SmolLM2-135M-Instruct (bundled default)", "cpu_count": os.cpu_count(),
              "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
              "target": {"ratio": TARGET_RATIO, "max_abs_diff": TARGET_DIFF}, "speed": rows, "memory": memory}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    chart(rows, Path(a.json).with_suffix(".png"))
    print(f"wrote {a.json} and {Path(a.json).with_suffix('.png')}")


if __name__ == "__main__":
    main()
