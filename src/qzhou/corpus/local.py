"""The `local` engine: one process per listed device (`--devices cpu,cuda:0,cuda:1`), each loading the model once
and pulling shards from a shared queue (a fast device simply takes more shards). One device runs in-process.

Workers report rows as they go, so the parent's progress bar shows rows/s and ETA over all of them; a worker
that dies (killed, out of memory) is an error naming its device, and the shards it finished stay finished.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from pathlib import Path

from tqdm import tqdm

from qzhou.corpus.inputs import InputFile, Shard, read_shard_rows
from qzhou.corpus.worker import EncodeSettings, WorkerStats, encode_one, encode_shards


def parse_devices(text: str | None) -> list[str]:
    """`cpu,cuda:0,cuda:1` -> one worker each; `cpu,cpu` is two CPU workers; None -> the default device."""
    if not text:
        return []
    devices = [d.strip() for d in str(text).split(",") if d.strip()]
    for d in devices:
        if not (d == "cpu" or d == "mps" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ValueError(f"--devices takes a comma list of cpu, mps, cuda or cuda:N (got {d!r} in {text!r})")
    return devices


def threads_per_worker(devices: list[str]) -> int:
    """CPU workers share the cores evenly (oversubscribed torch threads run slower than fewer threads)."""
    cpu_workers = max(1, sum(d == "cpu" for d in devices))
    return max(1, (os.cpu_count() or 1) // cpu_workers)


def run_in_process(embedder, files: dict[str, InputFile], shards: list[Shard], out: Path, s: EncodeSettings,
                   device: str, progress: bool) -> list[dict]:
    total = sum(x.rows for x in shards)
    stats = WorkerStats(worker="local-0", device=device)
    with tqdm(total=total, desc="encode", unit="row", disable=not progress) as bar:
        encode_shards(embedder, files, shards, out, s, stats, bar.update)
    return [stats.to_json()]


def _worker(rank: int, device: str, model: str, dtype: str, threads: int, files: dict[str, InputFile],
            jobs, results, out: Path, s: EncodeSettings) -> None:
    """A child process: load once, take shards until the queue says stop, report rows and final figures."""
    try:
        import torch

        from qzhou import Embedder

        if device == "cpu":
            torch.set_num_threads(threads)
        embedder = Embedder.load(model, dtype=dtype, device=device)
        stats = WorkerStats(worker=f"local-{rank}", device=device)
        while (shard := jobs.get()) is not None:
            for sh, ids, texts in read_shard_rows(files, [shard], s.field, s.id_field):
                encode_one(embedder, sh, ids, texts, out, s, stats, lambda n: results.put(("rows", rank, n)))
        results.put(("done", rank, stats.to_json()))
    except BaseException as e:  # noqa: B036 - the parent must hear about any failure, then the child exits
        results.put(("error", rank, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"))


def run_processes(model: str, dtype: str, devices: list[str], files: dict[str, InputFile], shards: list[Shard],
                  out: Path, s: EncodeSettings, progress: bool) -> list[dict]:
    """Spawn one worker per device, feed them the shards, follow their progress; the figures of each worker."""
    ctx = mp.get_context("spawn")  # never fork a process holding torch threads (or CUDA)
    jobs, results = ctx.Queue(), ctx.Queue()
    for shard in shards:
        jobs.put(shard)
    for _ in devices:
        jobs.put(None)
    threads = threads_per_worker(devices)
    procs = [ctx.Process(target=_worker, args=(r, d, str(model), dtype, threads, files, jobs, results, out, s),
                         daemon=True) for r, d in enumerate(devices)]
    for p in procs:
        p.start()
    finished: dict[int, dict] = {}
    try:
        with tqdm(total=sum(x.rows for x in shards), desc=f"encode x{len(devices)}", unit="row",
                  disable=not progress) as bar:
            while len(finished) < len(procs):
                try:
                    kind, rank, payload = results.get(timeout=1.0)
                except queue.Empty:
                    dead = [r for r, p in enumerate(procs) if r not in finished and not p.is_alive()]
                    if dead:
                        r = dead[0]
                        raise RuntimeError(f"encode worker {r} on {devices[r]} died (exit code {procs[r].exitcode}); "
                                           "finished shards are kept: rerun the same command to go on") from None
                    continue
                if kind == "rows":
                    bar.update(payload)
                elif kind == "done":
                    finished[rank] = payload
                else:
                    raise RuntimeError(f"encode worker {rank} on {devices[rank]} failed: {payload}")
    finally:
        for p in procs:
            if p.is_alive() and len(finished) < len(procs):
                p.terminate()
            p.join(timeout=10)
    return [finished[r] for r in sorted(finished)]
