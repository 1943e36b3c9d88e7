"""Benchmark qzhou's `Reranker.score` against sentence-transformers' `CrossEncoder.predict` on the same model and pairs.

The model: the bundled SmolLM2-135M loaded with `Reranker.load("default")` and saved with `Reranker.save` as a
CrossEncoder folder (LogitScore over the yes/no ids, the Qwen3-Reranker prompt as chat template), so both run the
same weights on the same prompts. Pairs: every sample query (src/qzhou/resources) against the first sample documents.

In one run, each contender scores the same pairs once after a warm-up on 4 pairs (wall time of the call):

* baseline: `CrossEncoder.predict` with its defaults (fp32, batch_size 32);
* `CrossEncoder.predict` with the weights in bf16 (model_kwargs dtype), for reference;
* `Reranker.score` with dtype="float32", and with dtype="auto" (bf16 on CPUs with avx512_bf16 / GPUs).

Reported: pairs/s, the ratio to the baseline, and the largest |p - p_baseline|. Target: Reranker.score >= 2x the
baseline at scores within 1e-3 (fp32). Then, in a fresh process, the peak resident memory of one
`Reranker.score` call (auto) for growing numbers of documents of the same length: flat with the token budget, growing with every document in one batch.

Run:  python bench/rerank_speed.py [--queries 16] [--docs-per-query 3] [--memory-docs 8 24 64] [--memory-only]
                                   [--json out.json]
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "src" / "qzhou" / "resources"
TARGET_RATIO, TARGET_DIFF = 2.0, 1e-3


def sample_pairs(queries: int, docs_per_query: int) -> list[tuple[str, str]]:
    qs = [json.loads(x)["query"] for x in (RESOURCES / "sample_queries.jsonl").read_text().splitlines()][:queries]
    ds = [json.loads(x)["text"] for x in (RESOURCES / "sample_corpus.jsonl").read_text().splitlines()]
    return [(q, ds[(i * docs_per_query + j) % len(ds)]) for i, q in enumerate(qs) for j in range(docs_per_query)]


def timed(fn, pairs) -> tuple[float, np.ndarray]:
    fn(pairs[:4])  # warm-up
    start = time.perf_counter()
    scores = np.asarray(fn(pairs), dtype=np.float64)
    return time.perf_counter() - start, scores


def speed(pairs: list[tuple[str, str]], folder: Path) -> list[dict]:
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    from qzhou import Reranker

    rows = []
    ce = CrossEncoder(str(folder), device="cpu")
    seconds, base = timed(partial(ce.predict, batch_size=32), pairs)
    rows.append({"contender": "CrossEncoder.predict fp32 (baseline)", "seconds": seconds, "scores": base})
    del ce
    ce16 = CrossEncoder(str(folder), device="cpu", model_kwargs={"dtype": torch.bfloat16})
    seconds, s = timed(partial(ce16.predict, batch_size=32), pairs)
    rows.append({"contender": "CrossEncoder.predict bf16 weights", "seconds": seconds, "scores": s})
    del ce16
    for dtype in ("float32", "auto"):
        r = Reranker.load(folder, dtype=dtype, device="cpu")
        seconds, s = timed(r.score, pairs)
        rows.append({"contender": f"Reranker.score dtype={dtype} ({str(r.dtype).removeprefix('torch.')})",
                     "seconds": seconds, "scores": s, "padding_share": 1 - r.last_stats["real_tokens"]
                     / r.last_stats["computed_tokens"]})
        del r
    for row in rows:
        row["pairs_per_s"] = round(len(pairs) / row["seconds"], 2)
        row["ratio"] = round(rows[0]["seconds"] / row["seconds"], 2)
        row["max_abs_diff"] = float(np.max(np.abs(row.pop("scores") - base)))
        row["seconds"] = round(row["seconds"], 2)
    return rows


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def memory_child(folder: str, counts: list[int], batch_tokens: int) -> None:
    """In a fresh process, for each count of same-length documents: the peak resident memory of one score() call
    over the memory before it (Linux: the peak counter VmHWM is reset through /proc/self/clear_refs), with the
    token budget and, for contrast, with every document in one batch."""
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
                        "prompt_tokens": r.last_stats["real_tokens"] // n,
                        "peak_over_before_mib": round(_status_mib("VmHWM") - before, 1)})
    print(json.dumps({"rows": out}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--docs-per-query", type=int, default=3)
    ap.add_argument("--memory-docs", type=int, nargs="*", default=[8, 24, 64])
    ap.add_argument("--memory-only", action="store_true", help="rerun the memory part; keep --json's speed rows")
    ap.add_argument("--batch-tokens", type=int, default=2048, help="(memory part) Reranker.score's token budget")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "rerank_speed.json"))
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_child:
        return memory_child(a.memory_child, a.memory_docs, a.batch_tokens)
    from qzhou import Reranker

    pairs = sample_pairs(a.queries, a.docs_per_query)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Reranker.load("default", dtype="float32").save(Path(tmp) / "smollm2-reranker")
        rows = json.loads(Path(a.json).read_text())["speed"] if a.memory_only else speed(pairs, folder)
        memory = {}
        if a.memory_docs:
            done = subprocess.run([sys.executable, __file__, "--memory-child", str(folder), "--batch-tokens",
                                   str(a.batch_tokens), "--memory-docs", *map(str, a.memory_docs)],
                                  capture_output=True, text=True, check=True)
            memory = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{len(pairs)} pairs, SmolLM2-135M, CPU ({os.cpu_count()} cores)")
    print(f"{'contender':<48}{'s':>8}{'pairs/s':>10}{'x baseline':>12}{'max |dp|':>12}")
    for row in rows:
        print(f"{row['contender']:<48}{row['seconds']:>8}{row['pairs_per_s']:>10}{row['ratio']:>12}"
              f"{row['max_abs_diff']:>12.2e}")
    for m in memory.get("rows", []):
        print(f"memory: {m['documents']:>4} documents x {m['prompt_tokens']} tokens, batch_tokens "
              f"{m['batch_tokens']}: peak +{m['peak_over_before_mib']} MiB over the memory before the call")
    result = {"pairs": len(pairs), "model": "SmolLM2-135M-Instruct (bundled default)", "cpu_count": os.cpu_count(),
              "target": {"ratio": TARGET_RATIO, "max_abs_diff": TARGET_DIFF}, "speed": rows, "memory": memory}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
