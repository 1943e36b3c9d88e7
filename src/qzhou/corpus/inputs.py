"""Input files of a corpus and the shard plan over them.

A corpus is one file or a folder of files (.jsonl/.json, .csv, .tsv, .parquet, .txt = one text per line). The
plan cuts every file into row ranges of `shard_rows` rows; a shard's name comes from its file and its range only,
so every engine, every `--shard i/N` process and every rerun agree on the names without talking to each other.
Rows are read through `qzhou.data.readers` (streamed, every bad row named by file and line).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from qzhou.data.readers import DataError, decode_lines, read_rows

READABLE = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


@dataclass(frozen=True)
class InputFile:
    path: str  # as given / found (absolute or relative to the working directory)
    rel: str  # relative to the input root: what shard names and ids are made from
    bytes: int
    mtime_ns: int
    rows: int


@dataclass(frozen=True)
class Shard:
    file: str  # InputFile.rel
    start: int
    end: int  # exclusive
    name: str

    @property
    def rows(self) -> int:
        return self.end - self.start

    def to_json(self) -> dict:
        return asdict(self)


def list_inputs(source: str | Path) -> tuple[Path, list[Path]]:
    """(root, files): a file is its own root; a folder gives its readable files, sorted, recursively."""
    source = Path(source)
    if source.is_file():
        return source.parent, [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such file or folder (--input)")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in READABLE)
    if not files:
        raise DataError(f"{source}: no input files ({', '.join(READABLE)}) in this folder (--input)")
    return source, files


def iter_file_rows(path: Path, field: str | None, id_field: str | None, rel: str) -> Iterator[tuple[str, str]]:
    """(id, text) of every row of one file, in order. Without an id field the id is `REL:ROW` (0-based row)."""
    if path.suffix.lower() == ".txt":
        if id_field:
            raise DataError(f"{path}: --id-field does not apply to .txt files (one text per line); ids are FILE:ROW")
        for i, (n, line) in enumerate(decode_lines(path)):
            if not line.strip():
                raise DataError(f"{path}:{n}: empty line (a .txt corpus holds one text per line)")
            yield f"{rel}:{i}", line
        return
    field = field or "text"
    for i, (where, row) in enumerate(read_rows(path)):
        text = row.get(field)
        if not isinstance(text, str) or not text.strip():
            found = f"found {sorted(row)}" if field not in row else f"got {text!r:.40}"
            raise DataError(f"{where}: field {field!r} must hold a non-empty text ({found}); choose it with --field")
        if id_field is None:
            yield f"{rel}:{i}", text
            continue
        rid = row.get(id_field)
        if rid is None or isinstance(rid, (dict, list)) or str(rid) == "":
            raise DataError(f"{where}: field {id_field!r} must hold the row's id (got {rid!r:.40}); "
                            "choose it with --id-field, or leave it out for FILE:ROW ids")
        yield str(rid), text


def count_rows(path: Path, field: str | None, id_field: str | None, rel: str) -> int:
    """Rows of one file: parquet from its metadata; the rest by one streamed pass that also checks every row's
    text and id, so a bad row fails before the model loads, not hours into a run."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return sum(1 for _ in iter_file_rows(path, field, id_field, rel))


def scan_inputs(source: str | Path, field: str | None = None, id_field: str | None = None,
                known: dict[str, dict] | None = None, progress: bool = True) -> list[InputFile]:
    """Every input file with its size, mtime and row count; counts in `known` (a manifest's files by rel) are
    reused while size and mtime are unchanged, so a rerun does not re-read a large corpus to plan."""
    root, paths = list_inputs(source)
    out = []
    for p in tqdm(paths, desc="count rows", unit="file", disable=not progress or len(paths) < 2):
        st = p.stat()
        rel = p.relative_to(root).as_posix()
        old = (known or {}).get(rel)
        same = old and old.get("bytes") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns
        rows = old["rows"] if same else count_rows(p, field, id_field, rel)
        out.append(InputFile(str(p), rel, st.st_size, st.st_mtime_ns, rows))
    if sum(f.rows for f in out) == 0:
        raise DataError(f"{source}: no rows to encode (--input)")
    return out


def shard_name(rel: str, start: int, end: int) -> str:
    """`<stem>-<hash of the relative path>-<start>-<end>.parquet`: readable, and unique across sub-folders."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(rel).stem)[:60]
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}-{start:010d}-{end:010d}.parquet"


def plan_shards(files: list[InputFile], shard_rows: int) -> list[Shard]:
    if shard_rows < 1:
        raise ValueError(f"--shard-rows must be at least 1 (got {shard_rows})")
    return [Shard(f.rel, s, min(s + shard_rows, f.rows), shard_name(f.rel, s, min(s + shard_rows, f.rows)))
            for f in files for s in range(0, f.rows, shard_rows)]


def parse_shard_spec(text: str | None) -> tuple[int, int]:
    """`--shard i/N` (0-based i) -> (i, N); None -> (0, 1)."""
    if text is None:
        return 0, 1
    head, sep, tail = str(text).partition("/")
    try:
        i, n = int(head), int(tail)
    except ValueError:
        i = n = -1
    if not sep or not 0 <= i < n:
        raise ValueError(f"--shard takes I/N with 0 <= I < N, e.g. 0/4 (got {text!r})")
    return i, n


def select(shards: list[Shard], index: int, count: int) -> list[Shard]:
    """This process's part under `--shard index/count`: every count-th shard (round-robin keeps parts even)."""
    return shards[index::count]


def read_shard_rows(files: dict[str, InputFile], shards: list[Shard], field: str | None,
                    id_field: str | None) -> Iterator[tuple[Shard, list[str], list[str]]]:
    """(shard, ids, texts) for `shards`, reading each file once in row order and keeping only their rows."""
    by_file: dict[str, list[Shard]] = {}
    for s in shards:
        by_file.setdefault(s.file, []).append(s)
    for rel, parts in by_file.items():
        parts = sorted(parts, key=lambda s: s.start)
        f = files[rel]
        rows = iter_file_rows(Path(f.path), field, id_field, rel)
        pos = 0
        for s in parts:
            ids, texts = [], []
            for rid, text in rows:
                if pos >= s.start:
                    ids.append(rid)
                    texts.append(text)
                pos += 1
                if pos == s.end:
                    break
            if len(ids) != s.rows:
                raise DataError(f"{f.path}: has fewer rows than when the corpus was planned ({pos} < {s.end}); "
                                "the input changed: encode into a new --output folder")
            yield s, ids, texts
