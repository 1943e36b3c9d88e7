"""What every engine runs per shard: read its rows, apply the template, embed with `Embedder.encode` (token-budget
batches), write the shard atomically. One function, so `local`, `ray` and `--shard i/N` produce the same bytes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qzhou.corpus.inputs import InputFile, Shard, read_shard_rows
from qzhou.corpus.shards import write_shard


@dataclass
class EncodeSettings:
    """How texts become stored vectors; identical in every worker (it is pickled to processes and actors)."""

    prompt_name: str | None = None
    instruction: str | None = None
    dim: int | None = None
    batch_tokens: int = 16384
    store_dtype: str = "float32"
    #: rows per `Embedder.encode` call inside a shard: the progress step (and bounds the tokenized batch held)
    chunk_rows: int = 4096
    field: str | None = None
    id_field: str | None = None


@dataclass
class WorkerStats:
    worker: str
    device: str
    rows: int = 0
    shards: int = 0
    seconds: float = 0.0
    real_tokens: int = 0

    def to_json(self) -> dict:
        rate = self.rows / self.seconds if self.seconds > 0 else None
        return {"worker": self.worker, "device": self.device, "rows": self.rows, "shards": self.shards,
                "seconds": round(self.seconds, 3), "rows_per_s": round(rate, 2) if rate else None,
                "real_tokens": self.real_tokens}


def embed_formatted(embedder, texts: list[str], s: EncodeSettings,
                    on_rows: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """(N, D) float32 embeddings of already-templated texts, `chunk_rows` at a time; and the real token count."""
    out, real = [], 0
    for start in range(0, len(texts), s.chunk_rows):
        part = texts[start:start + s.chunk_rows]
        out.append(embedder.encode(part, dim=s.dim, batch_tokens=s.batch_tokens, show_progress=False))
        real += embedder.last_stats.get("real_tokens", 0)
        if on_rows:
            on_rows(len(part))
    return np.concatenate(out), real


def encode_one(embedder, shard: Shard, ids: list[str], texts: list[str], out: Path, s: EncodeSettings,
               stats: WorkerStats, on_rows: Callable[[int], None] | None = None) -> None:
    """Template, embed and write one shard, adding its figures to `stats`."""
    started = time.perf_counter()
    emb, real = embed_formatted(embedder, embedder.format(texts, s.prompt_name, s.instruction), s, on_rows)
    write_shard(out / shard.name, ids, emb, s.store_dtype)
    stats.seconds += time.perf_counter() - started
    stats.rows += shard.rows
    stats.shards += 1
    stats.real_tokens += real


def encode_shards(embedder, files: dict[str, InputFile], shards: list[Shard], out: Path, s: EncodeSettings,
                  stats: WorkerStats, on_rows: Callable[[int], None] | None = None) -> WorkerStats:
    """Encode `shards` in file order, reading each input file once."""
    for shard, ids, texts in read_shard_rows(files, shards, s.field, s.id_field):
        encode_one(embedder, shard, ids, texts, out, s, stats, on_rows)
    return stats
