"""`qzhou data convert`: stream rows through a converter, check every record, write the good ones and route
the rest to `OUTPUT.skipped.jsonl` with their reasons (`on_error="skip"`), or stop at the first bad row
(`on_error="fail"`). Nothing is dropped silently: the summary counts every row."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from qzhou.data.converters import Skip, run_converter
from qzhou.data.readers import DataError, JsonlWriter, read_rows
from qzhou.data.records import check_record

OnError = Literal["skip", "fail"]


def skipped_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".jsonl") + ".skipped.jsonl")


def convert(kind: str, source: str | Path, output: str | Path, *, fields: dict[str, str] | None = None,
            on_error: OnError = "skip", reader: dict[str, Any] | None = None, instruction: str | None = None,
            progress: bool = True, **options) -> dict[str, Any]:
    """Convert `source` with converter `kind` into unified records at `output`; returns a summary."""
    output = Path(output)
    rows = read_rows(source, **(reader or {}))
    reasons: Counter[str] = Counter()
    side = skipped_path(output)
    with JsonlWriter(output) as out, JsonlWriter(side) as skipped:
        for where, item in tqdm(run_converter(kind, rows, fields or {}, **options), desc=f"convert {kind}",
                                unit="rec", disable=not progress):
            if not isinstance(item, Skip):
                _, errors, _ = check_record(item)
                if errors:
                    item = Skip("; ".join(f"{f or 'record'} {m}" for f, m in errors))
                elif instruction:
                    item["instruction"] = instruction
            if isinstance(item, Skip):
                if on_error == "fail":
                    raise DataError(f"{where}: {item.reason}")
                reasons[item.reason.split(" (")[0]] += 1
                skipped.write({"source": where, "reason": item.reason})
                continue
            out.write(item)
    if not skipped.count:
        side.unlink()
    return {"kind": kind, "source": str(source), "output": str(output), "written": out.count,
            "skipped": skipped.count, "skipped_file": str(side) if skipped.count else None,
            "skip_reasons": dict(reasons.most_common())}
