"""Streaming readers: every row comes with where it came from ("file:line" or "file: row N"), so errors can
name it. JSONL, CSV/TSV (with or without header), Parquet (record batches), local HF `datasets` folders
(Arrow, memory-mapped) and parallel line files (`s1.dev,s2.dev,labels.dev`: line i of each file is one row).
Nothing is loaded whole."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Row = tuple[str, dict[str, Any]]


class DataError(ValueError):
    """A bad row or file; the message names the file, line and field."""


def decode_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, streamed; a bad byte is an error naming the line and column."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{n}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None


def _jsonl(path: Path) -> Iterator[Row]:
    for n, line in decode_lines(path):
        if not line.strip():
            continue  # blank lines separate nothing in JSONL; they carry no row
        try:
            yield f"{path}:{n}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None


def _delimited(path: Path, delimiter: str | None, header: bool, columns: list[str] | None, quoting: bool) -> Iterator[Row]:
    delimiter = delimiter or ("," if path.suffix.lower() == ".csv" else "\t")
    csv.field_size_limit(sys.maxsize)
    text_lines = (line for _, line in decode_lines(path))
    reader = csv.reader(text_lines, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    names = columns
    for values in reader:
        n = reader.line_num
        if names is None:
            if header:
                names = [v.lstrip("\ufeff") for v in values]
                continue
            names = [str(i) for i in range(len(values))]
        elif header and n == 1 and columns is not None:
            continue
        if not values:
            continue
        if len(values) < len(names):
            raise DataError(f"{path}:{n}: {len(values)} columns, the header has {len(names)} ({names})")
        yield f"{path}:{n}", dict(zip(names, values))


def _parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield f"{path}: row {i}", row
            i += 1


def _hf_folder(path: Path) -> Iterator[Row]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise DataError(f"{path}: reading a HF datasets folder needs `pip install datasets`") from None
    ds = load_from_disk(str(path))  # memory-mapped Arrow
    if hasattr(ds, "keys"):
        raise DataError(f"{path}: a DatasetDict ({list(ds.keys())}); point at one split's folder")
    for i, row in enumerate(ds):
        yield f"{path}: row {i}", row


def _parallel(paths: list[Path], columns: list[str]) -> Iterator[Row]:
    iters = [decode_lines(p) for p in paths]
    n = 0
    while True:
        items = [next(it, None) for it in iters]
        if all(x is None for x in items):
            return
        n += 1
        if any(x is None for x in items):
            short = [str(p) for p, x in zip(paths, items) if x is None]
            raise DataError(f"{paths[0]}:{n}: parallel files differ in length ({', '.join(short)} ended first)")
        yield f"{paths[0]}:{n}", {c: line.strip() for c, (_, line) in zip(columns, items)}


def read_rows(source: str | Path, *, delimiter: str | None = None, header: bool = True,
              columns: list[str] | None = None, quoting: bool = True) -> Iterator[Row]:
    """Stream (where, row) pairs from `source` (see module docstring for the formats)."""
    text = str(source)
    if "," in text and not Path(text).exists():
        paths = [Path(p) for p in text.split(",")]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)}: no such file")
        if not columns or len(columns) != len(paths):
            raise DataError(f"{text}: parallel line files need --columns with one name per file ({len(paths)})")
        return _parallel(paths, columns)
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return _hf_folder(path)
        raise DataError(f"{path}: a folder, but not a HF datasets folder (no dataset_info.json / state.json)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _jsonl(path)
    if suffix == ".parquet":
        return _parquet(path)
    if suffix in (".csv", ".tsv", ".txt") or delimiter:
        return _delimited(path, delimiter, header, columns, quoting)
    raise DataError(f"{path}: unknown format {suffix!r}; use .jsonl, .csv, .tsv, .txt (tab), .parquet or a HF folder")


class JsonlWriter:
    """JSONL writer (UTF-8, one object per line) used as a context manager; writes to PATH.partial and renames
    on success."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0

    def __enter__(self) -> JsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._f = self._tmp.open("w", encoding="utf-8")
        return self

    def write(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.count += 1

    def __exit__(self, exc_type=None, *exc) -> None:
        """Publish the file only when the block finished; a failed run leaves no half-written output."""
        self._f.close()
        if exc_type is None:
            self._tmp.replace(self.path)
        else:
            self._tmp.unlink(missing_ok=True)
