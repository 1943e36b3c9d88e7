"""The sharded branch of `qzhou encode` (an output folder: `--output DIR/`): flags and dispatch only."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def is_sharded_output(output: str) -> bool:
    """A folder output (ends with `/` or already a directory) means shards + manifest; a file means .npy/.parquet."""
    return str(output).endswith(("/", os.sep)) or Path(output).is_dir()


def _concurrency(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    try:
        pair = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes MIN[,MAX] actor counts, e.g. 1,4 (got {text!r})") from None
    if not 1 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"needs 1 <= MIN <= MAX (got {text!r})")
    return pair


def add_sharded_args(p: argparse.ArgumentParser) -> None:
    """Flags of `encode --output DIR/` (ignored for single-file outputs)."""
    g = p.add_argument_group("corpus encoding (--output DIR/: parquet shards + manifest.json, resumable)")
    if "--id-field" not in p._option_string_actions:
        g.add_argument("--id-field", default=None, help="field holding each row's id (default: FILE:ROW)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: one process per --devices entry; ray: Ray Data actor pool (pip install 'qzhou[ray]')")
    g.add_argument("--devices", default=None, help="local workers, e.g. cpu,cpu or cuda:0,cuda:1 (default: --device)")
    g.add_argument("--shard", default=None, metavar="I/N", help="encode only part I of N (0-based), for Slurm arrays "
                   "or torchrun; all parts write into one folder")
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip finished shards; --no-resume deletes the folder's shards first")
    g.add_argument("--address", default=None, help="join this Ray cluster (default: start a local Ray)")
    g.add_argument("--shard-rows", type=int, default=50_000, help="rows per shard (the unit of resumption)")
    g.add_argument("--store-dtype", choices=["float32", "float16"], default="float32",
                   help="dtype of the stored vectors (float16 halves the disk)")
    g.add_argument("--concurrency", type=_concurrency, default=None, metavar="MIN[,MAX]",
                   help="ray: actors in the pool (default: one per GPU, or 1 on CPU)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="ray: GPUs per actor (default: 1 if CUDA)")


def run_sharded(a: argparse.Namespace) -> None:
    from qzhou.corpus.encode import CorpusJob, encode_corpus
    from qzhou.corpus.worker import EncodeSettings

    settings = EncodeSettings(prompt_name=a.prompt_name, instruction=a.instruction, dim=a.dim,
                              batch_tokens=a.batch_tokens, store_dtype=a.store_dtype, field=a.field,
                              id_field=getattr(a, "id_field", None))
    job = CorpusJob(model=a.model, input=a.input, output=a.output, settings=settings, shard_rows=a.shard_rows,
                    engine=a.engine, devices=a.devices or a.device, shard=a.shard, resume=a.resume,
                    address=a.address, dtype=a.dtype, ray_concurrency=a.concurrency,
                    ray_gpus_per_worker=a.gpus_per_worker, progress=not a.quiet)
    summary = encode_corpus(job)
    print(json.dumps(summary, indent=1))
