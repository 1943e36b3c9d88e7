"""Reading texts to embed (.txt, .jsonl, .csv/.tsv, .parquet, or a folder of them) and writing embeddings
(.npy, .parquet).

Decoding goes through the one reader layer (`qzhou.data.readers`): BOM, blank JSONL lines, quoted CSV newlines
and bad bytes are handled exactly as `qzhou data convert` handles them. Encoding is strict: a bad row is an error
naming the file, the line (or row) and the field; nothing is skipped silently, since row i of the output must be
text i of the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import numpy as np

from qzhou.data.readers import DataError, decode_lines, read_rows

READABLE = (".txt", ".jsonl", ".csv", ".tsv", ".parquet")
WRITABLE = (".npy", ".parquet")


InputError = DataError  # a bad input row; the message names file, line and field


@dataclass
class Inputs:
    """Texts to embed and, when the input has them, their ids (kept in the parquet output)."""

    texts: list[str] = dc_field(default_factory=list)
    ids: list[Any] | None = None
    id_field: str | None = None


def _check(text, where: str, field: str | None) -> str:
    what = f"field {field!r}" if field else "text"
    if not isinstance(text, str):
        raise InputError(f"{where}: {what} is {type(text).__name__}, not a string")
    if not text.strip():
        raise InputError(f"{where}: {what} is empty")
    return text


def _txt(path: Path, field: str | None, id_field: str | None) -> Inputs:
    if field or id_field:
        flag = "--field" if field else "--id-field"
        raise InputError(f"{path}: {flag} does not apply to .txt files (one text per line, no fields)")
    return Inputs([_check(t, f"{path}:{n}", None) for n, t in decode_lines(path)])


def _table(path: Path, field: str | None, id_field: str | None) -> Inputs:
    """Rows of a JSONL / CSV / TSV / Parquet file: the text of `field` (default `text`) and the id of
    `id_field` (default `id` when the first row has one; then every row must)."""
    field = field or "text"
    out = Inputs(id_field=id_field)
    for where, row in read_rows(path):  # the reader picks the format (and CSV/TSV delimiter) by suffix
        if field not in row:
            raise InputError(f"{where}: no field {field!r} (found {sorted(row)}); choose one with --field")
        if out.id_field is None and not out.texts and "id" in row:
            out.id_field = "id"
        if out.id_field is not None:
            if out.id_field not in row or row[out.id_field] is None:
                raise InputError(f"{where}: no id field {out.id_field!r} (found {sorted(row)}); choose one with "
                                 "--id-field, or give every row one")
            out.ids = [] if out.ids is None else out.ids
            out.ids.append(row[out.id_field])
        out.texts.append(_check(row[field], where, field))
    return out


def input_files(path: str | Path) -> list[Path]:
    """The files `path` names: itself, or every readable file of a folder in sorted order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in READABLE
                       and not p.name.startswith("."))
        if not files:
            raise InputError(f"{path}: a folder with no readable file ({', '.join(READABLE)})")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.suffix.lower() not in READABLE:
        raise InputError(f"{path}: unsupported input type {path.suffix.lower()!r}; use one of {', '.join(READABLE)}")
    return [path]


def read_inputs(path: str | Path, field: str | None = None, id_field: str | None = None) -> Inputs:
    """Texts (and ids) of a file or of a folder's files in sorted order; an empty input is an error."""
    out = Inputs()
    for file in input_files(path):
        part = _txt(file, field, id_field) if file.suffix.lower() == ".txt" else _table(file, field, id_field)
        if out.texts and (out.ids is None) != (part.ids is None):
            raise InputError(f"{file}: {'has' if part.ids is not None else 'lacks'} an id field where the files "
                             f"before it in {path} do not; give every file ids (or none)")
        if part.ids is not None:
            out.ids, out.id_field = (out.ids or []) + part.ids, part.id_field
        out.texts += part.texts
    if not out.texts:
        raise InputError(f"{path}: no texts to embed (an empty file?)")
    return out


def read_texts(path: str | Path, field: str | None = None) -> list[str]:
    return read_inputs(path, field).texts


def write_embeddings(path: str | Path, embeddings: np.ndarray, texts: list[str] | None = None,
                     ids: list[Any] | None = None) -> Path:
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
    columns: dict[str, Any] = {}
    if ids is not None:
        same = len({type(i) for i in ids}) == 1
        columns["id"] = pa.array(ids if same else [str(i) for i in ids])
    if texts is not None:
        columns["text"] = pa.array(texts)
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    pq.write_table(pa.table(columns), path)
    return path
