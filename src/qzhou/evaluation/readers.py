"""Readers for the table formats evaluation data comes in, each returning rows of role -> value with their line:

tsv    tab-separated, no quoting (STS-B, SICK, MSRP: their texts hold bare quote characters)
csv    RFC 4180 with quoting (Banking77, TREC-QA, AG News); `delimiter` defaults to ","
text   one record per line split on `delimiter` (`||` for Chinese STS-B; whitespace when unset, e.g. qrels)
smart  SMART collections (CISI, CACM, MED...): `.I id` starts a record, `.T .A .W .X ...` start its fields

UTF-8 files (the default, with or without a BOM) are decoded by qzhou's one reader layer (`qzhou.data.readers`:
`decode_lines`, `csv_records`), so a file reads the same here as in `qzhou data` and `qzhou encode`: blank lines
hold no row, quoted CSV fields keep their newlines, a bad byte is named with its line and column.

Columns are 0-based numbers or header names (SMART: field letters). `header` defaults to true when any column is
given by name and to false when all are numbers, so a header line is never read as data (or data as a header).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from qzhou.data.readers import csv_records, decode_lines

Column = int | str
FORMATS = ("tsv", "csv", "text", "smart")
_SUFFIX_FORMATS = {".tsv": "tsv", ".csv": "csv", ".txt": "text"}
_SMART_I = re.compile(r"^\.I\s+(\S+)\s*$")
_SMART_FIELD = re.compile(r"^\.([A-Z])\s*$")


class Source(BaseModel):
    """One file of a task: where it is, how to split it into columns, and which column holds which role."""

    model_config = ConfigDict(extra="forbid")
    path: str
    format: Literal["tsv", "csv", "text", "smart"] | None = None
    delimiter: str | None = None
    header: bool | None = None
    columns: dict[str, Column | list[Column]]
    split_column: Column | None = None
    encoding: str = "utf-8-sig"  # plain UTF-8, with or without a byte-order mark (MSRP has one)


class Row(dict):
    """role -> value, plus the line it starts on (for error messages)."""

    line: int = 0


def read_rows(src: Source, path: Path, split: str | None) -> list[Row]:
    """All rows of `path` (those of `split` when the source has a `split_column`), texts checked non-empty."""
    fmt = src.format or _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; set format: {'|'.join(FORMATS)}")
    if fmt == "smart":
        return _smart(src, path, _lines(src, path))
    by_name = any(isinstance(c, str) for c in _all_columns(src))
    header = by_name if src.header is None else src.header
    records = _records(fmt, src, path)
    names: list[str] | None = None
    if header:
        first = next(records, None)
        if first is None:
            raise ValueError(f"{path}: the file is empty (expected a header line)")
        names = [n.strip() for n in first[1]]
    index = {role: _index(c, names, path, role) for role, c in _flat_columns(src)}
    split_index = None if src.split_column is None else _index(src.split_column, names, path, "split_column")
    out: list[Row] = []
    seen_splits: set[str] = set()
    for line, fields in records:
        if split_index is not None:
            value = _field(fields, split_index, path, line, "split_column").strip()
            seen_splits.add(value)
            if value != split:
                continue
        row = Row()
        row.line = line
        for role, cols in src.columns.items():
            parts = [_field(fields, index[(role, i)], path, line, role) for i in range(_n(cols))]
            row[role] = _join(parts, path, line, role)
        out.append(row)
    if not out:
        if split_index is not None:
            raise ValueError(f"{path}: no rows for split {split!r}; its split column holds: "
                             f"{', '.join(sorted(seen_splits)) or 'nothing'}")
        raise ValueError(f"{path}: no data rows{' after the header' if header else ''}; an empty split cannot be scored")
    return out


def _utf8(src: Source) -> bool:
    return src.encoding.lower().replace("_", "-") in ("utf-8", "utf-8-sig", "utf8")


def _text(src: Source, path: Path) -> str:
    try:
        return path.read_text(encoding=src.encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid {src.encoding} (byte {e.start}); set encoding: in the task file") from None


def _lines(src: Source, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without its line end): the shared UTF-8 decoder, or the task's own encoding."""
    if _utf8(src):
        yield from decode_lines(path)
        return
    for n, line in enumerate(_text(src, path).split("\n"), 1):
        yield n, line.removesuffix("\r")


def _records(fmt: str, src: Source, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) per record with some text."""
    if fmt == "csv":
        if _utf8(src):
            records = csv_records(path, src.delimiter or ",")
        else:
            records = _csv_text_records(_text(src, path), src.delimiter or ",")
        for start, fields in records:
            if any(f.strip() for f in fields):
                yield start, fields
        return
    sep = "\t" if fmt == "tsv" else src.delimiter
    for n, line in _lines(src, path):
        if line.strip():
            yield n, (line.split(sep) if sep is not None else line.split())


def _csv_text_records(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) per CSV record of a decoded text, numbered as `csv_records` numbers UTF-8 files
    (the reader's line_num is a record's last line, which differs where a quoted field spans lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    end = 0
    for fields in reader:
        start, end = end + 1, reader.line_num
        yield start, fields


def _smart(src: Source, path: Path, lines: Iterator[tuple[int, str]]) -> list[Row]:
    """SMART records: `.I id` then fields (`.T`, `.W`, ...) whose lines run until the next marker."""
    if src.split_column is not None:
        raise ValueError(f"{path}: split_column does not apply to SMART files (they hold one split)")
    records: list[tuple[int, dict[str, list[str]]]] = []
    current: list[str] | None = None
    for n, line in lines:
        if m := _SMART_I.match(line):
            records.append((n, {"I": [m.group(1)]}))
            current = None
        elif m := _SMART_FIELD.match(line):
            if not records:
                raise ValueError(f"{path}:{n}: field .{m.group(1)} before the first '.I id' line")
            current = records[-1][1].setdefault(m.group(1), [])
        elif line.strip():
            if not records:
                raise ValueError(f"{path}:{n}: text before the first '.I id' line; is this a SMART file?")
            if current is not None:
                current.append(line.strip())
    if not records:
        raise ValueError(f"{path}: no '.I id' record; an empty file cannot be scored")
    out: list[Row] = []
    for line, fields in records:
        row = Row()
        row.line = line
        for role, cols in src.columns.items():
            letters = cols if isinstance(cols, list) else [cols]
            parts = []
            for c in letters:
                if not isinstance(c, str) or not re.fullmatch(r"[A-Za-z]", c):
                    raise ValueError(f"{path}: SMART columns are field letters such as I, T, W (got {c!r} for {role})")
                parts.append(" ".join(fields.get(c.upper(), [])))
            row[role] = _join(parts, path, line, role)
        out.append(row)
    return out


def _all_columns(src: Source) -> list[Column]:
    cols = [c for _, c in _flat_columns(src)]
    return cols + ([src.split_column] if src.split_column is not None else [])


def _flat_columns(src: Source) -> Iterator[tuple[tuple[str, int], Column]]:
    for role, cols in src.columns.items():
        for i, c in enumerate(cols if isinstance(cols, list) else [cols]):
            yield (role, i), c


def _n(cols: Column | list[Column]) -> int:
    return len(cols) if isinstance(cols, list) else 1


def _index(col: Column, names: list[str] | None, path: Path, role: object) -> int:
    what = role[0] if isinstance(role, tuple) else role
    if isinstance(col, int):
        if col < 0:
            raise ValueError(f"{path}: column {col} for {what}: column numbers start at 0")
        return col
    if names is None:
        raise ValueError(f"{path}: column {col!r} for {what} is a name but the task says header: false; "
                         "give a 0-based column number or set header: true")
    if col not in names:
        raise ValueError(f"{path}: column {col!r} (for {what}) is not in the header; the header has: {', '.join(names)}")
    return names.index(col)


def _field(fields: list[str], i: int, path: Path, line: int, role: str) -> str:
    if i >= len(fields):
        raise ValueError(f"{path}:{line}: field '{role}' wants column {i} but the row has {len(fields)} column(s); "
                         "check the delimiter and the column numbers")
    return fields[i]


def _join(parts: list[str], path: Path, line: int, role: str) -> str:
    value = " ".join(p.strip() for p in parts if p.strip())
    if not value:
        raise ValueError(f"{path}:{line}: field '{role}' is empty; fill it or remove the row")
    return value
