"""`encode_corpus`: plan the shards, check or write the manifest, skip finished shards, run an engine.

The folder is the unit of resumption: whichever engine or `--shard i/N` process wrote a shard, a later run with
the same model, prompt and plan sees its final file and does not encode it again.
"""

from __future__ import annotations

import gc
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from qzhou.corpus import manifest as mf
from qzhou.corpus.inputs import InputFile, Shard, parse_shard_spec, plan_shards, scan_inputs, select
from qzhou.corpus.local import parse_devices, run_in_process, run_processes
from qzhou.corpus.shards import remove_temporaries, shard_rows
from qzhou.corpus.worker import EncodeSettings
from qzhou.mining import load_embedder

ENGINES = ("local", "ray")


@dataclass
class CorpusJob:
    """Everything `qzhou encode ... --output DIR/` says, as a library call."""

    model: Any  # a model folder / hub id / .gguf (every engine), or a loaded Embedder (in-process only)
    input: str | Path
    output: str | Path
    settings: EncodeSettings = field(default_factory=EncodeSettings)
    shard_rows: int = 50_000
    engine: str = "local"
    devices: str | None = None
    shard: str | None = None  # "i/N"
    resume: bool = True
    address: str | None = None
    dtype: str = "auto"
    ray_concurrency: tuple[int, int] | None = None
    ray_gpus_per_worker: float | None = None
    progress: bool = True


def _identity(embedder, job: CorpusJob, files: list[InputFile]) -> dict:
    s = job.settings
    example = embedder.format(["{text}"], s.prompt_name, s.instruction)[0]
    return {
        "format": mf.FORMAT,
        "model": {"source": str(job.model) if isinstance(job.model, (str, Path)) else type(job.model).__name__,
                  "fingerprint": mf.fingerprint(embedder), "dtype": str(embedder.dtype).removeprefix("torch.")},
        "prompt": {"prompt_name": s.prompt_name, "instruction": s.instruction, "template": example},
        "dimension": s.dim or embedder.hidden_size,
        "normalize": bool(embedder.config.normalize),
        "store_dtype": s.store_dtype,
        "max_length": embedder.config.max_length,
        "input": {"source": str(job.input), "field": s.field, "id_field": s.id_field, "shard_rows": job.shard_rows,
                  "files": [asdict(f) for f in files]},
    }


def _prepare_folder(out: Path, new: dict, old: dict | None, resume: bool) -> None:
    """Refuse a folder of another run (or clear it under --no-resume), then write the plan."""
    if old is not None and not resume:
        for s in old.get("shards", []):
            (out / s["name"]).unlink(missing_ok=True)
        for p in (out / "workers").glob("*.json"):
            p.unlink()
        old = None
    if old is not None:
        mf.check_same(old, new, out / "manifest.json")
    else:
        stray = [p.name for p in out.glob("*.parquet") if p.name not in {s["name"] for s in new["shards"]}]
        if stray:
            raise ValueError(f"{out}: holds parquet files that no manifest describes ({stray[0]} ...); "
                             "pick an empty or new --output folder")
    mf.write_manifest(out, new)


def _worker_dtype(job: CorpusJob, devices: list[str]) -> str:
    """`auto` resolved once for the workers' device kind, so the parent's fingerprint and every worker (CPU or GPU,
    process or actor) use one dtype: one embedding space per folder."""
    import torch

    from qzhou.modeling.runtime import resolve_device, resolve_dtype

    if job.engine == "ray":
        gpu = job.ray_gpus_per_worker if job.ray_gpus_per_worker is not None else float(torch.cuda.is_available())
        device = torch.device("cuda" if gpu else "cpu")
    else:
        device = resolve_device(devices[0] if devices else None)
    return str(resolve_dtype(job.dtype, device)).removeprefix("torch.")


def _run_engine(job: CorpusJob, embedder, config, files: dict[str, InputFile], todo: list[Shard], out: Path) -> list[dict]:
    devices = parse_devices(job.devices)
    if job.engine == "ray":
        from qzhou.corpus.ray_engine import run_ray

        return run_ray(job, config, files, todo, out)
    if len(devices) <= 1:
        return run_in_process(embedder, files, todo, out, job.settings, str(embedder.device), job.progress)
    if not isinstance(job.model, (str, Path)):
        raise ValueError("--devices with several workers needs a model path (each worker loads it)")
    return run_processes(job.model, job.dtype, devices, files, todo, out, job.settings, job.progress)


def encode_corpus(job: CorpusJob) -> dict:
    """Encode what is not yet encoded; returns the figures (rows encoded in this run, skipped shards, rows/s)."""
    started = time.perf_counter()
    if job.engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)} (got {job.engine!r})")
    part = parse_shard_spec(job.shard)
    devices = parse_devices(job.devices)
    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
    old = mf.read_manifest(out)
    known = {f["rel"]: f for f in old["input"]["files"]} if old and job.resume else None
    files = scan_inputs(job.input, job.settings.field, job.settings.id_field, known, job.progress)
    in_process = job.engine == "local" and len(devices) <= 1
    if not in_process and isinstance(job.model, (str, Path)):
        job = replace(job, dtype=_worker_dtype(job, devices))
    embedder = load_embedder(job.model, job.dtype, devices[0] if in_process and devices else None if in_process else "cpu")
    shards = plan_shards(files, job.shard_rows)
    new = {**_identity(embedder, job, files), "shards": [s.to_json() for s in shards], "versions": mf.versions()}
    _prepare_folder(out, new, old, job.resume)
    remove_temporaries(out)
    mine = select(shards, *part)
    todo = [s for s in mine if shard_rows(out / s.name) != s.rows]
    config = embedder.config
    if not in_process and embedder is not job.model:
        del embedder  # the workers load their own copy
        gc.collect()
        embedder = None
    run_started = time.perf_counter()
    workers = _run_engine(job, embedder, config, {f.rel: f for f in files}, todo, out) if todo else []
    seconds = time.perf_counter() - run_started
    encoded = sum(w["rows"] for w in workers)
    tag = mf.worker_tag(f"{job.engine}-{part[0]}of{part[1]}")
    mf.record_worker(out, tag, {"run": tag, "host": socket.gethostname(), "engine": job.engine,
                                "shard": f"{part[0]}/{part[1]}", "rows": encoded, "wall_seconds": round(seconds, 3),
                                "rows_per_s": round(encoded / seconds, 2) if encoded and seconds > 0 else None,
                                "workers": workers})
    final = mf.write_manifest(out, {**new, "wall_seconds_last_run": round(time.perf_counter() - started, 3)})
    return {"output": str(out), "rows": sum(s.rows for s in shards), "rows_encoded": encoded,
            "shards": len(shards), "shards_this_part": len(mine), "shards_skipped": len(mine) - len(todo),
            "shards_encoded": len(todo), "complete": final["complete"], "seconds": round(seconds, 3),
            "rows_per_s": round(encoded / seconds, 2) if encoded and seconds > 0 else None, "workers": workers}
