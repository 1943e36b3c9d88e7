"""`qzhou data convert`: stream rows through a converter, check every record, write the good ones and route
the rest to `OUTPUT.skipped.jsonl` with their line numbers and reasons (`on_error="skip"`), or stop at the first
bad row and leave no output (`on_error="fail"`). Nothing is dropped silently: every input line that holds a row
is counted, and for one-record-per-row converters rows read = records written + rows skipped."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from qzhou.data.converters import Skip, run_converter
from qzhou.data.readers import DataError, JsonlWriter, Row, line_of, read_rows
from qzhou.data.records import check_record, describe_errors

OnError = Literal["skip", "fail"]


def skipped_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".jsonl") + ".skipped.jsonl")


class SkipLog:
    """The `OUTPUT.skipped.jsonl` side file: one line per skipped input line, with its location and reason."""

    def __init__(self, writer: JsonlWriter):
        self.writer = writer
        self.reasons: Counter[str] = Counter()
        self.unreadable = 0  # lines the reader could not make a row of (bad JSON, bad bytes, short CSV rows...)

    def __call__(self, where: str, reason: str, text: str | None = None) -> None:
        """The reader's `on_bad`: an input line that holds no readable row."""
        self.unreadable += 1
        self.skip(where, reason, text)

    def skip(self, where: str, reason: str, text: str | None = None) -> None:
        entry: dict[str, Any] = {"source": where, "line": line_of(where), "reason": reason}
        if text is not None:
            entry["text"] = text
        self.writer.write(entry)
        self.reasons[reason.split(" (")[0]] += 1


def _counted(rows: Iterator[Row], counter: Counter) -> Iterator[Row]:
    """The reader's rows, counted as the converter takes them (rows read = good rows + unreadable lines)."""
    for where, row in rows:
        counter["rows"] += 1
        yield where, row


def convert(kind: str, source: str | Path, output: str | Path, *, fields: dict[str, str] | None = None,
            on_error: OnError = "skip", reader: dict[str, Any] | None = None, instruction: str | None = None,
            progress: bool = True, **options) -> dict[str, Any]:
    """Convert `source` with converter `kind` into unified records at `output`; returns a summary."""

    output = Path(output)
    side = skipped_path(output)
    read: Counter[str] = Counter()
    with JsonlWriter(output) as out, JsonlWriter(side) as skipped:
        log = SkipLog(skipped) if on_error == "skip" else None
        rows = _counted(read_rows(source, **(reader or {}), on_bad=log), read)
        for where, item in tqdm(run_converter(kind, rows, fields or {}, **options), desc=f"convert {kind}",
                                unit="rec", disable=not progress):
            if not isinstance(item, Skip):
                _, errors, _ = check_record(item)
                if errors:
                    item = Skip(describe_errors(errors))
                elif instruction:
                    item["instruction"] = instruction
            if isinstance(item, Skip):
                if log is None:
                    raise DataError(f"{where}: {item.reason}")
                log.skip(where, item.reason)
                continue
            out.write(item)
    if not skipped.count:
        side.unlink()
    summary = {"kind": kind, "source": str(source), "output": str(output),
               "rows_read": read["rows"] + (log.unreadable if log else 0), "written": out.count,
               "skipped": skipped.count, "skipped_file": str(side) if skipped.count else None,
               "skip_reasons": dict(log.reasons.most_common()) if log else {}}
    _tell(summary)
    return summary


def _tell(summary: dict[str, Any]) -> None:
    """One line on stderr: the counts, and a warning when the input was empty or nothing was written."""
    if summary["rows_read"] == 0:
        print(f"warning: {summary['source']}: no rows (an empty file?); wrote an empty {summary['output']}",
              file=sys.stderr)
    elif summary["written"] == 0:
        top = next(iter(summary["skip_reasons"]), "?")
        print(f"warning: every row of {summary['source']} was skipped (most often: {top}); "
              f"see {summary['skipped_file']}", file=sys.stderr)
    else:
        print(f"{summary['source']}: {summary['rows_read']} rows read, {summary['written']} records written, "
              f"{summary['skipped']} skipped" + (f" (see {summary['skipped_file']})" if summary["skipped"] else ""),
              file=sys.stderr)
