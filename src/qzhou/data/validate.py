"""`qzhou data validate`: per-file counts per task, errors (unusable rows: missing or empty fields, a negative
equal to a positive, bad labels) and warnings (over-long texts, duplicate pairs, a positive equal to its
query), and the label / score distribution. Errors name file, line and field.

`on_error="fail"` stops at the first error; `"skip"` keeps going, and with `clean=PATH` writes the good
records there and the bad ones, with reasons, to `PATH.skipped.jsonl`.

Memory stays nearly flat in the number of rows: duplicate detection keeps a 64-bit hash and a line number per
row in compact arrays (12 bytes a row, 20 with an STS score), not the texts.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from qzhou.data.convert import skipped_path
from qzhou.data.readers import DataError, JsonlWriter, line_of, read_rows
from qzhou.data.records import check_record, describe_errors, normalize_text

EXAMPLES = 5


def _pair_key(record: dict[str, Any]) -> int:
    if "text1" in record:
        parts = [record["text1"], record["text2"]]
    elif "text" in record:
        parts = [record["text"], str(record.get("label"))]
    else:
        parts = [record["query"], *(record.get("pos") or [])[:1]]
    digest = hashlib.blake2b("\x1f".join(normalize_text(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _line(where: str) -> int:
    tail = where.rsplit(":", 1)[-1].replace(" row ", "")
    return int(tail) if tail.strip().isdigit() else 0


def validate_file(path: str | Path, *, task: str | None = None, on_error: Literal["skip", "fail"] = "skip",
                  max_chars: int | None = 8192, clean: str | Path | None = None,
                  progress: bool = True) -> dict[str, Any]:
    path = Path(path)
    tasks: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    labels: Counter[Any] = Counter()
    scores = array("d")
    keys, lines = array("Q"), array("I")
    rows = 0
    writer = JsonlWriter(clean).__enter__() if clean else None
    side = JsonlWriter(skipped_path(Path(clean))).__enter__() if clean else None
    failed = True
    invalid = _Invalid(errors, examples, side)
    try:
        rows_in = read_rows(path, on_bad=invalid if on_error == "skip" else None)
        for where, record in tqdm(rows_in, desc=f"validate {path.name}", unit="row", disable=not progress):
            rows += 1
            kind, errs, warns = check_record(record, task, max_chars)
            if errs:
                field, message = errs[0]
                text = f"{where}: field {field!r} {message}" if field else f"{where}: record {message}"
                if on_error == "fail":
                    raise DataError(text)
                invalid.add(where, text, [f"{f.split('[')[0] or 'record'} {m}" for f, m in errs],
                            describe_errors(errs), record=record)
                continue
            tasks[kind] += 1
            for f, m in warns:
                warnings[f"{f} {m}"] += 1
            keys.append(_pair_key(record))
            lines.append(_line(where))
            if "score" in record:
                scores.append(float(record["score"]))
            elif "label" in record:
                labels[record.get("label_name", record["label"])] += 1
            if writer:
                writer.write(record)
        failed = False
    finally:
        if writer:
            writer.__exit__(DataError if failed else None)
            side.__exit__(DataError if failed else None)
            if not failed and not side.count:
                side.path.unlink()
    rows, bad = rows + invalid.unreadable, invalid.count
    dup_lines = _duplicates(np.frombuffer(keys, dtype=np.uint64), np.frombuffer(lines, dtype=np.uint32))
    if len(dup_lines):
        warnings["duplicate pair"] += len(dup_lines)
        examples["duplicates"] = [f"{path}:{n}: duplicate pair" for n in dup_lines[:EXAMPLES]]
    report: dict[str, Any] = {"file": str(path), "rows": rows, "valid": rows - bad, "invalid": bad,
                              "tasks": dict(tasks), "errors": dict(errors.most_common()),
                              "warnings": dict(warnings.most_common()), "examples": examples}
    if labels:
        report["labels"] = {str(k): v for k, v in sorted(labels.items(), key=lambda kv: -kv[1])}
    if scores:
        s = np.frombuffer(scores, dtype=np.float64)
        edges = np.linspace(s.min(), s.max(), 6) if s.max() > s.min() else np.array([s.min(), s.min() + 1])
        counts, edges = np.histogram(s, bins=edges)
        report["scores"] = {"min": float(s.min()), "max": float(s.max()), "mean": round(float(s.mean()), 4),
                            "histogram": {f"{a:g}-{b:g}": int(c) for a, b, c in zip(edges, edges[1:], counts)}}
    return report


class _Invalid:
    """A file's invalid rows, bad records and unreadable lines alike: counted per reason, the first few kept as
    examples, each written to the side file (with `clean`)."""

    def __init__(self, errors: Counter, examples: dict[str, list[str]], side: JsonlWriter | None):
        self.errors, self.examples, self.side = errors, examples, side
        self.count = self.unreadable = 0

    def __call__(self, where: str, reason: str, text: str | None = None) -> None:
        """The reader's `on_bad` (skip mode): a line it could not make a row of is one more invalid row."""
        self.unreadable += 1
        self.add(where, f"{where}: {reason}", ["unreadable line"], reason, text=text)

    def add(self, where: str, example: str, kinds: list[str], reason: str, **extra: Any) -> None:
        self.count += 1
        self.errors.update(kinds)
        if len(self.examples.setdefault("errors", [])) < EXAMPLES:
            self.examples["errors"].append(example)
        if self.side:
            self.side.write({"source": where, "line": line_of(where), "reason": reason, **extra})


def _duplicates(keys: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Line numbers of rows whose pair key appeared on an earlier row."""
    if len(keys) < 2:
        return np.array([], dtype=np.uint32)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeat = np.zeros(len(keys), dtype=bool)
    repeat[1:] = sorted_keys[1:] == sorted_keys[:-1]
    return np.sort(lines[order[repeat]])


def format_report(report: dict[str, Any]) -> str:
    out = [f"{report['file']}: {report['rows']} rows, {report['valid']} valid, {report['invalid']} invalid"
           f"  tasks {report['tasks']}"]
    for key in ("errors", "warnings", "labels", "scores"):
        if report.get(key):
            out.append(f"  {key}: {report[key]}")
    for key, lines in report["examples"].items():
        out += [f"  e.g. {line}" for line in lines]
        total = report["invalid"] if key == "errors" else report["warnings"].get("duplicate pair", 0)
        if total > len(lines):
            out.append(f"  ... and {total - len(lines)} more {key} (all counted above; --clean writes them out)")
    if report["rows"] == 0:
        out.append(f"  warning: {report['file']} holds no rows (an empty file?)")
    return "\n".join(out)
