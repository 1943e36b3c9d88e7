"""Exact top-k: `qzhou.search.top_k` (numpy blockwise, and faiss IndexFlatIP) against the baseline it replaced, a
full score matrix and a stable argsort (the previous `search.top_k`, and mining's numpy fallback).

Random unit vectors (seeded), every contender on the same data in one run, timed as the best of --rounds; peak
memory is what numpy allocates (tracemalloc sees numpy's buffers, not faiss's own). Every contender must return
the baseline's hits exactly (ties are broken by index everywhere; random data has none).

Run:  python bench/search.py [--docs 100000] [--queries 500] [--dim 256] [--k 100] [--rounds 2]
                             [--out bench/results/search.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np

from qzhou.search import normalize, top_k


def full_argsort(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: the whole (Q, N) score matrix, sorted row by row."""
    scores = queries @ docs.T
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, idx, axis=1), idx


def measure(run, rounds: int) -> tuple[float, float, np.ndarray]:
    """(best seconds, peak MiB of numpy allocations, indices) of `run()`."""
    best, peak, idx = float("inf"), 0.0, None
    for _ in range(rounds):
        tracemalloc.start()
        started = time.perf_counter()
        _, idx = run()
        best = min(best, time.perf_counter() - started)
        peak = max(peak, tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    return best, peak, idx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "search.json")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    docs = normalize(rng.standard_normal((a.docs, a.dim), dtype=np.float32))
    queries = normalize(rng.standard_normal((a.queries, a.dim), dtype=np.float32))
    contenders = {"full argsort (baseline)": lambda: full_argsort(queries, docs, a.k),
                  "top_k numpy blockwise": lambda: top_k(queries, docs, a.k, metric="dot", faiss_min_docs=10**12)}
    try:
        import faiss  # noqa: F401

        contenders["top_k faiss IndexFlatIP"] = lambda: top_k(queries, docs, a.k, metric="dot", faiss_min_docs=0)
    except ImportError:
        print("faiss is not installed (pip install 'qzhou[mine]'): its row is left out")
    rows, base = {}, None
    for name, run in contenders.items():
        seconds, peak, idx = measure(run, a.rounds)
        base = base or (seconds, idx)
        same = float((idx == base[1]).mean())
        rows[name] = {"seconds": round(seconds, 3), "peak_numpy_mib": round(peak, 1),
                      "speedup_vs_baseline": round(base[0] / seconds, 2), "same_hits_as_baseline": same}
        print(f"{name:26s} {seconds:7.2f} s  peak {peak:7.1f} MiB  {base[0] / seconds:5.2f}x  same hits {same:.4f}")
        if same != 1.0:
            raise SystemExit(f"{name} returned other hits than the baseline")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"setup": {k: v for k, v in vars(a).items() if k != "out"},
                                 "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                 "results": rows}, indent=2) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
