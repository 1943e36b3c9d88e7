"""Embedding shards on disk: parquet files with `id` (string) and `embedding` (fixed-size list of float16 or
float32), written atomically, read back memory-mapped.

Atomic: a shard is written under a temporary name in the same folder and renamed into place, so a file with a
shard's final name is always complete; a killed run leaves at most a `*.tmp-*` file, which the next run removes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

STORE_DTYPES = ("float32", "float16")
TMP_MARK = ".tmp-"


def write_shard(path: Path, ids: list[str], embeddings: np.ndarray, dtype: str = "float32") -> Path:
    """(N, D) embeddings -> PATH, via a temporary file and a rename (never a half-written shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if dtype not in STORE_DTYPES:
        raise ValueError(f"--store-dtype must be one of {', '.join(STORE_DTYPES)} (got {dtype!r})")
    if len(ids) != embeddings.shape[0]:
        raise ValueError(f"{path.name}: {len(ids)} ids for {embeddings.shape[0]} embeddings")
    emb = np.ascontiguousarray(embeddings, dtype=np.dtype(dtype))
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    table = pa.table({"id": pa.array(ids, type=pa.string()), "embedding": vectors})
    tmp = path.with_name(f"{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}")
    # no compression and no dictionary: embeddings do not compress, and plain pages map straight to memory
    pq.write_table(table, tmp, compression="none", use_dictionary=["id"], write_statistics=False)
    os.replace(tmp, path)
    return path


def shard_rows(path: Path) -> int | None:
    """Rows of a finished shard (from the parquet footer), or None when the file is missing or unreadable."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temporaries(folder: Path) -> int:
    """Delete the temporary files that killed runs on this host left behind (a live process's file, or another
    host's, may still be renamed into place); returns how many."""
    host = socket.gethostname()
    stale = []
    for p in folder.glob(f"*.parquet{TMP_MARK}*"):
        owner, _, pid = p.name.partition(TMP_MARK)[2].rpartition("-")
        if owner == host and pid.isdigit() and not _alive(int(pid)):
            stale.append(p)
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def read_shard(path: Path, with_ids: bool = True) -> tuple[list[str] | None, np.ndarray]:
    """(ids, (N, D) embeddings) of one shard, memory-mapped: the embedding array is a view of Arrow buffers,
    not Python objects (ids are only materialised when asked for)."""
    import pyarrow.parquet as pq

    columns = ["id", "embedding"] if with_ids else ["embedding"]
    table = pq.read_table(path, columns=columns, memory_map=True)
    col = table.column("embedding").combine_chunks()
    width = col.type.list_size
    flat = col.values.to_numpy(zero_copy_only=False)
    emb = flat.reshape(-1, width)  # (N, D)
    ids = table.column("id").to_pylist() if with_ids else None
    return ids, emb


def iter_shards(folder: Path, names: list[str], with_ids: bool = False) -> Iterator[tuple[int, list[str] | None,
                                                                                        np.ndarray]]:
    """(first global row, ids, embeddings) per shard, in manifest order: the corpus one shard at a time."""
    offset = 0
    for name in names:
        ids, emb = read_shard(folder / name, with_ids)
        yield offset, ids, emb
        offset += emb.shape[0]
