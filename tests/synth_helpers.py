"""Helpers of the synthesis and mining tests: run the `qzhou` CLI with the feature modules registered (in this
process or as a subprocess), whether or not `qzhou.cli.FEATURE_CLIS` lists them yet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MODULES = ("qzhou.synthesis.cli", "qzhou.mining_cli")
BOOT = ("import sys, qzhou.cli as c; "
        f"c.FEATURE_CLIS += tuple(m for m in {MODULES!r} if m not in c.FEATURE_CLIS); "
        "sys.exit(c.main(sys.argv[1:]))")


def qzhou(argv: list[str]) -> int:
    import qzhou.cli as c

    missing = tuple(m for m in MODULES if m not in c.FEATURE_CLIS)
    old = c.FEATURE_CLIS
    c.FEATURE_CLIS = old + missing
    try:
        return c.main([str(a) for a in argv])
    finally:
        c.FEATURE_CLIS = old


def qzhou_subprocess(argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BOOT, *map(str, argv)], **kw)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def retrieval_rows(n: int) -> list[dict]:
    """n distinct (query, positive) records, 6-word queries and 12-word positives."""
    rows = []
    for i in range(n):
        w = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(12)]
        rows.append({"id": f"r{i}", "query": f"item {i} " + " ".join(w[:4]),
                     "pos": [f"record {i} says " + " ".join(w[:10])]})
    return rows
