"""Reading texts to embed (.txt, .jsonl, .csv/.tsv, .parquet) and writing embeddings (.npy, .parquet).

Every bad row is an error naming the file, the line (or row) and the field; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from qzhou.data.readers import DataError, decode_lines

READABLE = (".txt", ".jsonl", ".csv", ".tsv", ".parquet")
WRITABLE = (".npy", ".parquet")


InputError = DataError  # a bad input row; the message names file, line and field


def _decode_lines(path: Path) -> list[str]:
    return [line for _, line in decode_lines(path)]


def _check(text, where: str, field: str | None) -> str:
    what = f"field {field!r}" if field else "text"
    if not isinstance(text, str):
        raise InputError(f"{where}: {what} is {type(text).__name__}, not a string")
    if not text.strip():
        raise InputError(f"{where}: {what} is empty")
    return text


def read_texts(path: str | Path, field: str | None = None) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if field:
            raise InputError(f"{path}: --field does not apply to .txt files (one text per line)")
        return [_check(t, f"{path}:{n}", None) for n, t in enumerate(_decode_lines(path), 1)]
    field = field or "text"
    if suffix == ".jsonl":
        texts = []
        for n, line in enumerate(_decode_lines(path), 1):
            if not line.strip():
                raise InputError(f"{path}:{n}: empty line (every line must be a JSON object)")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict) or field not in row:
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise InputError(f"{path}:{n}: no field {field!r} (found {keys}); choose one with --field")
            texts.append(_check(row[field], f"{path}:{n}", field))
        return texts
    if suffix in (".csv", ".tsv"):
        body = "\n".join(_decode_lines(path))
        reader = csv.DictReader(io.StringIO(body), delimiter="\t" if suffix == ".tsv" else ",")
        if reader.fieldnames is None or field not in reader.fieldnames:
            raise InputError(f"{path}:1: no column {field!r} in the header (found {reader.fieldnames}); choose one with --field")
        return [_check(row[field], f"{path}:{reader.line_num}", field) for row in reader]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        if field not in names:
            raise InputError(f"{path}: no column {field!r} (found {names}); choose one with --field")
        column = pq.read_table(path, columns=[field]).column(field).to_pylist()
        return [_check(t, f"{path}: row {i}", field) for i, t in enumerate(column)]
    raise InputError(f"{path}: unsupported input type {suffix!r}; use one of {', '.join(READABLE)}")


def write_embeddings(path: str | Path, embeddings: np.ndarray, texts: list[str] | None = None) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITABLE:
        raise InputError(f"{path}: unsupported output type {suffix!r}; use one of {', '.join(WRITABLE)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, embeddings.astype(np.float32))
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = embeddings.astype(np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    columns = {"embedding": vectors} if texts is None else {"text": pa.array(texts), "embedding": vectors}
    pq.write_table(pa.table(columns), path)
    return path
