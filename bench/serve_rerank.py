"""Benchmark the rerank routes of `qzhou serve --reranker R`: prefix reuse in the server's batches (the default)
against `--no-prefix-cache` (every prompt run in full), in one run.

The bundled SmolLM2-135M as a Qwen3-format reranker (fp32, `Reranker.save` layout), the TREC-QA test questions
with the most candidate answers (`../shared/data/trecqa-wang`; sample data without it), one `POST /v1/rerank`
request per question with its candidates. Each server runs in its own process; clients send the requests one at a
time (1) and all at once (the number of questions). Reported per server and concurrency: documents/s, the ratio
to `--no-prefix-cache` at the same concurrency, the server process's CPU seconds (/proc, the load-independent
figure on a shared machine) and the largest |p - p_ref| against `Reranker.score(..., prefix_cache=False)` in
this process.

Run:  python bench/serve_rerank.py [--questions 4] [--docs 50] [--threads N] [--json bench/results/serve_rerank.json]
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rerank_speed import rerank_pairs  # noqa: E402 - the same TREC-QA selection as bench/rerank_speed.py
from synth import cpu_seconds  # noqa: E402 - a process's CPU time from /proc

SERVERS = {"prefix-cached (default)": [], "--no-prefix-cache": ["--no-prefix-cache"]}


async def send(url: str, requests: list[tuple[str, list[str]]], concurrency: int) -> tuple[float, list[np.ndarray]]:
    """Wall seconds for all requests with `concurrency` clients, and each request's p(yes) in document order."""
    import httpx2

    out: list[np.ndarray | None] = [None] * len(requests)
    todo = iter(range(len(requests)))
    async with httpx2.AsyncClient(base_url=url, timeout=1200) as client:
        async def worker():
            for i in todo:
                query, docs = requests[i]
                r = await client.post("/v1/rerank", json={"query": query, "documents": docs,
                                                          "return_documents": False})
                r.raise_for_status()
                p = np.zeros(len(docs))
                for x in r.json()["results"]:
                    p[x["index"]] = x["relevance_score"]
                out[i] = p

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, out  # type: ignore[return-value]


def measure(name: str, flags: list[str], folder: str, requests, reference, levels, threads) -> list[dict]:
    from qzhou.serving.launch import free_port, start_server

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "qzhou.cli", "serve", "--reranker", folder, "--dtype", "float32", "--port", str(port),
           "--log-level", "warning", "--request-timeout", "1800", *flags, *(["--threads", str(threads)] if threads else [])]
    proc = start_server(cmd, url, timeout=300)
    rows = []
    try:
        asyncio.run(send(url, requests[:1], 1))  # warm-up
        for c in levels:
            cpu0 = cpu_seconds(proc.pid)
            wall, got = asyncio.run(send(url, requests, c))
            cpu = cpu_seconds(proc.pid) - cpu0
            docs = sum(len(d) for _, d in requests)
            diff = max(float(np.abs(g - r).max()) for g, r in zip(got, reference))
            rows.append(dict(server=name, concurrency=c, seconds=round(wall, 2), docs_per_s=round(docs / wall, 2),
                             cpu_seconds=round(cpu, 2), max_abs_diff=diff))
            print(f"  {name:<24} c={c:<2} {docs / wall:6.1f} docs/s  cpu {cpu:6.1f} s  max |dp| {diff:.1e}",
                  flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    return rows


def run(a: argparse.Namespace) -> dict:
    import torch

    from qzhou import Reranker
    from qzhou.default_model import smollm2_folder

    if a.threads:
        torch.set_num_threads(a.threads)
    what, pairs = rerank_pairs(a.questions, a.docs)
    requests: list[tuple[str, list[str]]] = []
    for q, d in pairs:
        if not requests or requests[-1][0] != q:
            requests.append((q, []))
        requests[-1][1].append(d)
    levels = sorted({1, len(requests)})
    with tempfile.TemporaryDirectory() as tmp:
        r = Reranker.load(smollm2_folder(), dtype="float32", device="cpu")
        folder = str(r.save(Path(tmp) / "smollm2-reranker"))
        reference = [r.score([(q, d) for d in docs], prefix_cache=False) for q, docs in requests]
        del r
        print(f"{what}: {len(requests)} requests", flush=True)
        rows = [row for name, flags in SERVERS.items()
                for row in measure(name, flags, folder, requests, reference, levels, a.threads)]
    for row in rows:
        plain = next(x for x in rows if x["server"] == "--no-prefix-cache" and x["concurrency"] == row["concurrency"])
        row["ratio"] = round(plain["seconds"] / row["seconds"], 2)
        row["cpu_ratio"] = round(plain["cpu_seconds"] / row["cpu_seconds"], 2)
    return {"case": what, "requests": len(requests), "docs": len(pairs), "threads": a.threads or torch.get_num_threads(),
            "load_average": os.getloadavg(), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=4, help="TREC-QA questions, one request each")
    p.add_argument("--docs", type=int, default=50, help="candidate answers per question")
    p.add_argument("--threads", type=int, default=None, help="torch threads, the same for both servers")
    p.add_argument("--json", default=str(HERE / "results" / "serve_rerank.json"))
    a = p.parse_args()
    result = run(a)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n| server | clients | docs/s | x --no-prefix-cache | server CPU s | x CPU | max abs dp |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(f"| {r['server']} | {r['concurrency']} | {r['docs_per_s']} | {r['ratio']} | {r['cpu_seconds']} | "
              f"{r['cpu_ratio']} | {r['max_abs_diff']:.1e} |")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
