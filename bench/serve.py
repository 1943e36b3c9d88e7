"""Benchmark `qzhou serve` (dynamic batching) against offline `Embedder.encode` and a naive FastAPI server.

The bundled SmolLM2-135M embedder (bidirectional, mean pooling, fp32; `qzhou.default_model`) and the same distinct
STS-B sentences, in one run:

* offline: one `Embedder.encode(sentences)` call in this process (the ceiling: no HTTP, one big sorted batch);
* qzhou serve: `qzhou serve` in its own process; 1, 8 and 64 concurrent clients send one sentence per request;
* naive: the same model behind FastAPI in its own process, one `encode` call per request, no batching (a plain
  `def` route, so FastAPI runs requests in its thread pool, as such servers usually do).

Reported per server and concurrency: sentences/s, the ratio to offline encode and to the naive server at the same
concurrency, p50 / p99 latency, and the largest difference between served and offline vectors. On a shared,
oversubscribed machine wall-clock rates depend on what else runs (a server with more runnable threads takes more
of the CPU), so the server process's CPU time is measured too (/proc): sentences per CPU-second and its ratios
are the load-independent comparison.
Targets at 64 clients: qzhou serve >= 0.8x offline encode and >= 3x the naive server.

Run:  python bench/serve.py [--n 2000] [--concurrency 1,8,64] [--threads N] [--json bench/results/serve.json]
      (--naive-server FOLDER PORT runs the naive server itself; the benchmark starts it.)
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
from encode import stsb_sentences  # noqa: E402 - the same sentence selection as bench/encode.py

TARGET_OFFLINE, TARGET_NAIVE = 0.8, 3.0


def naive_server(folder: str, port: int, threads: int | None) -> None:
    """FastAPI + uvicorn, one `Embedder.encode` per request: what one writes without a batcher."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from qzhou import Embedder

    if threads:
        torch.set_num_threads(threads)
    e = Embedder.load(folder, dtype="float32")
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(body: dict):
        vectors = e.encode(body["input"])
        return {"data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def load(url: str, texts: list[str], concurrency: int) -> tuple[float, list[float], list[np.ndarray]]:
    """`concurrency` clients, each sending the next sentence as soon as its previous answer came back."""
    import httpx2

    latencies: list[float] = [0.0] * len(texts)
    vectors: list[np.ndarray | None] = [None] * len(texts)
    todo = iter(range(len(texts)))
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker():
            for i in todo:
                t0 = time.perf_counter()
                r = await client.post("/v1/embeddings", json={"input": [texts[i]]})
                r.raise_for_status()
                latencies[i] = time.perf_counter() - t0
                vectors[i] = np.asarray(r.json()["data"][0]["embedding"], np.float32)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return wall, latencies, vectors


def measure(name: str, url: str, pid: int, texts: list[str], levels: list[int], offline: np.ndarray) -> list[dict]:
    from synth import cpu_seconds  # the server process's CPU time (/proc), as bench/synth.py measures it

    asyncio.run(load(url, texts[:16], 4))  # warm-up
    rows = []
    for c in levels:
        cpu0 = cpu_seconds(pid)
        wall, lat, vecs = asyncio.run(load(url, texts, c))
        cpu = cpu_seconds(pid) - cpu0
        rows.append(dict(server=name, concurrency=c, seconds=wall, per_s=len(texts) / wall,
                         cpu_seconds=cpu, per_cpu_s=len(texts) / cpu,
                         p50_ms=1000 * float(np.percentile(lat, 50)), p99_ms=1000 * float(np.percentile(lat, 99)),
                         max_abs_diff=float(np.abs(np.stack(vecs) - offline).max())))
        r = rows[-1]
        print(f"  {name:<12} c={c:<3} {r['per_s']:7.1f}/s  {r['per_cpu_s']:7.1f}/cpu-s  p50 {r['p50_ms']:7.1f} ms  "
              f"p99 {rows[-1]['p99_ms']:7.1f} ms", flush=True)
    return rows


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, levels = result["rows"], result["concurrency"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(levels))
    for k, server in enumerate(("qzhou serve", "naive")):
        per = [next(r["per_s"] for r in rows if r["server"] == server and r["concurrency"] == c) for c in levels]
        a.bar(x + (k - 0.5) * 0.38, per, 0.38, label=server)
        for q, style in (("p50_ms", "-o"), ("p99_ms", "--o")):
            b.plot(levels, [next(r[q] for r in rows if r["server"] == server and r["concurrency"] == c)
                            for c in levels], style, label=f"{server} {q[:3]}")
    a.axhline(result["offline_per_s"], color="k", ls=":", label="offline encode")
    a.set_xticks(x, [str(c) for c in levels])
    a.set_xlabel("concurrent clients (one sentence per request)")
    a.set_ylabel("sentences / s")
    a.legend(fontsize=8)
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("concurrent clients")
    b.set_ylabel("latency (ms)")
    b.legend(fontsize=8)
    fig.suptitle(f"qzhou serve, SmolLM2-135M fp32, {result['n']} STS-B sentences, {os.cpu_count()} CPU cores",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(a: argparse.Namespace) -> dict:
    import torch

    from qzhou import Embedder
    from qzhou.default_model import smollm2_folder
    from qzhou.serving.launch import free_port, start_server

    if a.threads:
        torch.set_num_threads(a.threads)
    texts = stsb_sentences(a.n)
    levels = [int(c) for c in a.concurrency.split(",")]
    threads = ["--threads", str(a.threads)] if a.threads else []
    with tempfile.TemporaryDirectory() as tmp:
        e = Embedder.load(smollm2_folder(), dtype="float32", attention="bidirectional", pooling="mean")
        folder = str(e.save(Path(tmp) / "smollm2-embedder"))
        e.encode(texts[:64])
        t0, cpu0 = time.perf_counter(), time.process_time()
        offline = e.encode(texts, show_progress=False)
        offline_s, offline_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        del e
        print(f"offline encode: {len(texts) / offline_s:.1f} sentences/s", flush=True)
        rows = []
        for name, cmd in (
            ("qzhou serve", [sys.executable, "-m", "qzhou.cli", "serve", folder, "--dtype", "float32",
                             "--log-level", "warning", *threads]),
            ("naive", [sys.executable, __file__, "--naive-server", folder, "{port}", *threads]),
        ):
            port = free_port()
            cmd = [c.replace("{port}", str(port)) for c in cmd] + ([] if name == "naive" else ["--port", str(port)])
            url = f"http://127.0.0.1:{port}"
            proc = start_server(cmd, url, timeout=300)
            try:
                rows += measure(name, url, proc.pid, texts, levels, offline)
            finally:
                proc.terminate()
                proc.wait(60)
    for r in rows:
        naive = next(x for x in rows if x["server"] == "naive" and x["concurrency"] == r["concurrency"])
        r["vs_offline"] = r["per_s"] * offline_s / len(texts)
        r["vs_naive"] = r["per_s"] / naive["per_s"]
        r["cpu_vs_offline"] = offline_cpu / r["cpu_seconds"]
        r["cpu_vs_naive"] = naive["cpu_seconds"] / r["cpu_seconds"]
    top = next(r for r in rows if r["server"] == "qzhou serve" and r["concurrency"] == max(levels))
    return {"n": len(texts), "concurrency": levels, "threads": a.threads or torch.get_num_threads(),
            "load_average": os.getloadavg(), "offline_seconds": offline_s, "offline_per_s": len(texts) / offline_s,
            "offline_cpu_seconds": offline_cpu, "offline_per_cpu_s": len(texts) / offline_cpu,
            "rows": rows, "targets": {"vs_offline": TARGET_OFFLINE, "vs_naive": TARGET_NAIVE,
                                      "met": top["vs_offline"] >= TARGET_OFFLINE and top["vs_naive"] >= TARGET_NAIVE}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="distinct STS-B sentences")
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--threads", type=int, default=None, help="torch threads, the same for every contender")
    p.add_argument("--json", default=str(HERE / "results" / "serve.json"))
    p.add_argument("--naive-server", nargs=2, metavar=("FOLDER", "PORT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.naive_server:
        naive_server(a.naive_server[0], int(a.naive_server[1]), a.threads)
        return
    result = run(a)
    print(f"\n{'server':<12} {'clients':>7} {'sent/s':>8} {'x offline':>9} {'x naive':>8} {'sent/cpu-s':>10} "
          f"{'cpu x off':>9} {'cpu x naive':>11} {'p50 ms':>8} {'p99 ms':>8} {'max |diff|':>10}")
    for r in result["rows"]:
        print(f"{r['server']:<12} {r['concurrency']:>7} {r['per_s']:>8.1f} {r['vs_offline']:>9.2f} "
              f"{r['vs_naive']:>8.2f} {r['per_cpu_s']:>10.1f} {r['cpu_vs_offline']:>9.2f} {r['cpu_vs_naive']:>11.2f} "
              f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_abs_diff']:>10.1e}")
    print(f"offline encode: {result['offline_per_s']:.1f} sentences/s, {result['offline_per_cpu_s']:.1f} per CPU-s; "
          f"load average {result['load_average']}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    chart(result, Path(a.json).with_suffix(".png"))
    print(f"wrote {a.json} and {Path(a.json).with_suffix('.png')}")


if __name__ == "__main__":
    main()
