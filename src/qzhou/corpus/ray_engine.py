"""The `ray` engine (`pip install 'qzhou[ray]'`): a Ray Data pipeline over the shard plan.

    shard plan -> [CPU tasks] read the shard's rows, apply the template -> [actor pool] embed, write the shard

Each actor loads the model once (`num_gpus` per actor on GPU clusters) and runs `Embedder.encode`'s token-budget
batches through the same `embed_formatted` as the local engine, so the shards are byte-for-byte those of `local`.
The pool grows between `concurrency=(min, max)` actors as Ray's autoscaler allows. `--address` joins a running
cluster (the input, the model and the output folder must then be on storage every node sees); otherwise a local
Ray starts for this process.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from qzhou.corpus.inputs import InputFile, Shard, read_shard_rows
from qzhou.corpus.shards import write_shard
from qzhou.corpus.worker import EncodeSettings, WorkerStats, embed_formatted

RAY_INSTALL = "pip install 'qzhou[ray]'"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ValueError(f"--engine ray needs Ray Data: {RAY_INSTALL}") from None
    return ray


def start_ray(address: str | None, num_cpus: int | None = None):
    """Join `address`, or start a local Ray without the dashboard; reuse one already started in this process."""
    ray = import_ray()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return ray


def read_and_format(row: dict, files: dict[str, InputFile], settings: EncodeSettings, config) -> dict:
    """CPU stage: one shard's ids and templated texts (the template needs only the config, not the model)."""
    from qzhou import Embedder

    shard = Shard(**json.loads(row["shard"]))
    [(_, ids, texts)] = list(read_shard_rows(files, [shard], settings.field, settings.id_field))
    texts = Embedder.format(SimpleNamespace(config=config), texts, settings.prompt_name, settings.instruction)
    return {"shard": row["shard"], "ids": ids, "texts": texts}


class EncodeActor:
    """Holds one model; embeds and writes one shard per call."""

    def __init__(self, model: str, dtype: str, out: str, settings: EncodeSettings, gpus: float, threads: int):
        import ray
        import torch

        from qzhou import Embedder

        device = "cuda" if gpus else "cpu"
        if device == "cpu":
            torch.set_num_threads(threads)
        self.embedder = Embedder.load(model, dtype=dtype, device=device)
        self.out, self.settings, self.device = Path(out), settings, device
        self.worker = f"ray-{ray.get_runtime_context().get_actor_id()[:8]}"

    def __call__(self, row: dict) -> dict:
        shard = Shard(**json.loads(row["shard"]))
        started = time.perf_counter()
        emb, real = embed_formatted(self.embedder, [str(t) for t in row["texts"]], self.settings)
        write_shard(self.out / shard.name, [str(i) for i in row["ids"]], emb, self.settings.store_dtype)
        return {"shard": shard.name, "rows": shard.rows, "seconds": time.perf_counter() - started,
                "real_tokens": real, "worker": self.worker, "device": self.device}


def run_ray(job, config, files: dict[str, InputFile], shards: list[Shard], out: Path) -> list[dict]:
    """Run the pipeline over `shards`; per-actor figures (rows, seconds, rows/s) for the manifest."""
    ray = start_ray(job.address)
    import torch

    gpus = job.ray_gpus_per_worker if job.ray_gpus_per_worker is not None else float(torch.cuda.is_available())
    lo, hi = job.ray_concurrency or (1, max(1, int(ray.cluster_resources().get("GPU", 0) // gpus) if gpus else 1))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar below counts rows
    threads = max(1, (os.cpu_count() or 1) // hi)
    ds = ray.data.from_items([{"shard": json.dumps(s.to_json())} for s in shards], override_num_blocks=len(shards))
    ds = ds.map(read_and_format, fn_kwargs={"files": files, "settings": job.settings, "config": config}, num_cpus=1)
    ds = ds.map(EncodeActor, fn_constructor_kwargs={"model": str(job.model), "dtype": job.dtype, "out": str(out),
                                                    "settings": job.settings, "gpus": gpus, "threads": threads},
                compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi), num_gpus=gpus or None, num_cpus=1)
    stats: dict[str, WorkerStats] = {}
    with tqdm(total=sum(s.rows for s in shards), desc="encode (ray)", unit="row", disable=not job.progress) as bar:
        for row in ds.iter_rows():
            w = stats.setdefault(row["worker"], WorkerStats(worker=row["worker"], device=row["device"]))
            w.rows += int(row["rows"])
            w.shards += 1
            w.seconds += float(row["seconds"])
            w.real_tokens += int(row["real_tokens"])
            bar.update(int(row["rows"]))
    return [w.to_json() for w in stats.values()]
