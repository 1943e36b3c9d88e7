"""Streaming readers, the one reader layer of qzhou: every row comes with where it came from ("file:line" or
"file: row N"), so errors can name it. JSONL, CSV/TSV (with or without header), Parquet (record batches), local
HF `datasets` folders (Arrow, memory-mapped) and parallel line files (`s1.dev,s2.dev,labels.dev`: line i of each
file is one row). Nothing is loaded whole. `textio.read_texts` and the evaluation readers decode through the same
functions, so all of them agree on what a file holds:

- UTF-8, with or without a byte-order mark; a bad byte is a bad line (named with its line and column);
- blank lines carry no row (JSONL and CSV alike);
- a JSONL line must be one JSON object whose strings are encodable (a lone surrogate `"\\ud800"` is a bad line);
- a quoted CSV field keeps its newlines; a row whose column count differs from the header's is a bad row.

A bad line raises `DataError`, unless the caller passes `on_bad(where, reason, text)`: then it is reported there
and reading goes on (what `--on-error skip` uses to route every bad line to `OUTPUT.skipped.jsonl`).
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Row = tuple[str, dict[str, Any]]
#: on_bad(where, reason, text): told about a bad line instead of raising; `text` is the line as read (or None)
OnBad = Callable[[str, str, "str | None"], None]

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_JSON_TYPES = {int: "number", float: "number", str: "string", list: "array", bool: "boolean", type(None): "null"}


class DataError(ValueError):
    """A bad row or file; the message names the file, line and field."""


def report_bad(on_bad: OnBad | None, where: str, reason: str, text: str | None = None) -> None:
    """Raise (no `on_bad`) or report one bad line."""
    if on_bad is None:
        raise DataError(f"{where}: {reason}")
    on_bad(where, reason, text)


def line_of(where: str) -> int | None:
    """The line number in a "file:line" location (None for "file: row N")."""
    head, _, tail = where.rpartition(":")
    return int(tail) if head and tail.isdigit() else None


def _decode(raw: bytes, first: bool) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for one raw line; a BOM on the first line is dropped."""
    if first and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); re-save the file as UTF-8"


def decode_lines(path: Path, *, keep_ends: bool = False, on_bad: OnBad | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file (BOM or not), streamed; line endings stripped unless `keep_ends`."""
    with Path(path).open("rb") as f:
        for n, raw in enumerate(f, 1):
            text, reason = _decode(raw, n == 1)
            if text is None:
                report_bad(on_bad, f"{path}:{n}", reason, raw.decode("utf-8", "backslashreplace").rstrip("\r\n"))
                continue
            yield n, text if keep_ends else text.rstrip("\r\n")


def _unencodable(value: Any, field: str = "") -> str | None:
    """The field holding a string that UTF-8 cannot encode (a lone surrogate), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return field or "value"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        name = f"{field}.{key}" if field and isinstance(key, str) else f"{field}[{key}]" if field else str(key)
        bad = _unencodable(item, name)
        if bad:
            return bad
    return None


def parse_json_line(line: str) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) or (None, reason) for one JSONL line: an object whose strings are valid Unicode."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg} at column {e.colno})"
    if not isinstance(row, dict):
        kind = _JSON_TYPES.get(type(row), type(row).__name__)
        return None, f"a bare JSON {kind}, not an object: every line must be one record {{\"field\": ...}}"
    if _SURROGATE_ESCAPE.search(line):
        field = _unencodable(row)
        if field:
            return None, f"field {field!r} holds a lone surrogate escape (\\ud800-\\udfff), which is not text"
    return row, None


def _jsonl(path: Path, on_bad: OnBad | None = None) -> Iterator[Row]:
    for n, line in decode_lines(path, on_bad=on_bad):
        if not line.strip():
            continue  # blank lines separate nothing in JSONL; they carry no row
        row, reason = parse_json_line(line)
        if row is None:
            report_bad(on_bad, f"{path}:{n}", reason, line)
            continue
        yield f"{path}:{n}", row


class _LineFeed:
    """Decoded lines (ends kept) for the csv module, remembering the line number each record starts on."""

    def __init__(self, path: Path, on_bad: OnBad | None):
        self._lines = decode_lines(path, keep_ends=True, on_bad=on_bad)
        self.start: int | None = None
        self.last = ""

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        n, text = next(self._lines)
        if self.start is None:
            self.start = n
        self.last = text
        return text


def csv_records(path: Path, delimiter: str, quoting: bool = True,
                on_bad: OnBad | None = None) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each record (blank lines hold none); quoted fields keep their newlines."""
    csv.field_size_limit(sys.maxsize)
    feed = _LineFeed(path, on_bad)
    reader = csv.reader(feed, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    while True:
        feed.start = None
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            report_bad(on_bad, f"{path}:{feed.start}", f"unreadable CSV ({e}); check the quoting", feed.last)
            continue
        if values:  # a blank line; a row of empty fields is still a row (its fields get checked)
            yield feed.start, values


def _delimited(path: Path, delimiter: str | None, header: bool, columns: list[str] | None, quoting: bool,
               on_bad: OnBad | None = None) -> Iterator[Row]:
    delimiter = delimiter or ("," if path.suffix.lower() == ".csv" else "\t")
    names = columns
    for n, values in csv_records(path, delimiter, quoting, on_bad):
        if names is None and header:
            names = [v.strip() for v in values]
            continue
        if header and columns is not None and n == 1:
            continue
        if names is None:  # no header: columns are numbered per row, so no row loses a column
            yield f"{path}:{n}", {str(i): v for i, v in enumerate(values)}
        elif len(values) != len(names):
            report_bad(on_bad, f"{path}:{n}", f"{len(values)} columns, the header has {len(names)} "
                       f"({', '.join(names)}); check the delimiter and quoting", delimiter.join(values))
        else:
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


def _parallel(paths: list[Path], columns: list[str], on_bad: OnBad | None = None) -> Iterator[Row]:
    """Line i of every file is row i; a line that does not decode makes its whole row bad (rows stay aligned)."""
    files = [p.open("rb") for p in paths]
    try:
        n = 0
        while True:
            raws = [f.readline() for f in files]
            if not any(raws):
                return
            n += 1
            if not all(raws):
                short = [str(p) for p, raw in zip(paths, raws) if not raw]
                raise DataError(f"{paths[0]}:{n}: parallel files differ in length ({', '.join(short)} ended first)")
            decoded = [_decode(raw, n == 1) for raw in raws]
            bad = next(((p, reason) for p, (_, reason) in zip(paths, decoded) if reason), None)
            if bad:
                report_bad(on_bad, f"{bad[0]}:{n}", bad[1])
                continue
            yield f"{paths[0]}:{n}", {c: text.strip() for c, (text, _) in zip(columns, decoded)}
    finally:
        for f in files:
            f.close()


def read_rows(source: str | Path, *, delimiter: str | None = None, header: bool = True,
              columns: list[str] | None = None, quoting: bool = True, on_bad: OnBad | None = None) -> Iterator[Row]:
    """Stream (where, row) pairs from `source` (see module docstring for the formats and `on_bad`)."""
    text = str(source)
    if "," in text and not Path(text).exists():
        paths = [Path(p) for p in text.split(",")]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)}: no such file")
        if not columns or len(columns) != len(paths):
            raise DataError(f"{text}: parallel line files need --columns with one name per file ({len(paths)})")
        return _parallel(paths, columns, on_bad)
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return _hf_folder(path)
        raise DataError(f"{path}: a folder, but not a HF datasets folder (no dataset_info.json / state.json)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _jsonl(path, on_bad)
    if suffix == ".parquet":
        return _parquet(path)
    if suffix in (".csv", ".tsv", ".txt") or delimiter:
        return _delimited(path, delimiter, header, columns, quoting, on_bad)
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
