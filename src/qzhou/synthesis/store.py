"""The job journal: one SQLite file (WAL) holding the outcome of every request, keyed by a hash of what decides
the answer (operation, input, rendered prompt, model, sampling parameters).

Why this makes `kill -9` safe: a result is committed the moment it arrives (WAL + synchronous=NORMAL survives
a killed process; only a power cut can lose the last commits), and the output file is written from the journal
only at the end, atomically. Running the same command again finds every finished request by its key and sends
only the rest; since the output is rebuilt from the journal, it can hold no duplicate row. An in-flight request
at the moment of the kill had no result yet, so it is sent again: that is the only repetition.

A lock file keeps two processes from working on one journal at once (they would send the same requests).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    source TEXT,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    output TEXT,
    request TEXT,
    error TEXT,
    attempts INTEGER,
    prompt_tokens INTEGER DEFAULT 0,
    completion_tokens INTEGER DEFAULT 0,
    model TEXT,
    updated REAL
);
"""


def request_key(operation: str, inputs: Any, messages: Any, model: str, params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything that decides the answer; the same command gives the same keys."""
    blob = json.dumps([operation, inputs, messages, model, params], sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Entry:
    status: str
    output: dict[str, Any] | None
    error: str | None
    attempts: int


class JobStore:
    """Open with `JobStore(path)`; use as a context manager so the lock is released."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.path.with_name(self.path.name + ".lock"))
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: every write is one commit
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            self.close()
            raise ValueError(f"{self.path}: not a qzhou job store ({e}); pass another --store") from None

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "db", None) is not None:
            self.db.close()
            self.db = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def get(self, key: str) -> Entry | None:
        row = self.db.execute("SELECT status, output, error, attempts FROM requests WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Entry(row[0], json.loads(row[1]) if row[1] else None, row[2], row[3] or 0)

    def put(self, key: str, *, operation: str, source: str, status: str, output: dict | None = None,
            request: Any = None, error: str | None = None, attempts: int = 0, prompt_tokens: int = 0,
            completion_tokens: int = 0, model: str = "") -> None:
        """Record an outcome; a `done` row is final (a later failure of the same key never overwrites it)."""
        self.db.execute(
            "INSERT INTO requests (key, operation, source, status, output, request, error, attempts, prompt_tokens,"
            " completion_tokens, model, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET status = excluded.status, output = excluded.output,"
            " error = excluded.error, attempts = requests.attempts + excluded.attempts,"
            " prompt_tokens = requests.prompt_tokens + excluded.prompt_tokens,"
            " completion_tokens = requests.completion_tokens + excluded.completion_tokens,"
            " updated = excluded.updated WHERE requests.status != 'done'",
            (key, operation, source, status, json.dumps(output, ensure_ascii=False) if output is not None else None,
             json.dumps(request, ensure_ascii=False) if request is not None else None, error, attempts,
             prompt_tokens, completion_tokens, model, time.time()))

    def totals(self) -> dict[str, Any]:
        """Counts and tokens over every run that used this journal (a resumed job reports its whole cost)."""
        rows = self.db.execute("SELECT status, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) FROM requests"
                               " GROUP BY status").fetchall()
        out = {"done": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for status, n, pt, ct in rows:
            out[status] = n
            out["prompt_tokens"] += pt or 0
            out["completion_tokens"] += ct or 0
        return out


def _lock(path: Path):
    """An exclusive advisory lock (released by the OS even on kill -9); no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; do not run two jobs on one store there
        return None
    f = path.open("a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ValueError(f"{path.with_suffix('')}: another qzhou synth is using this job store; wait for it to "
                         "finish or pass another --store") from None
    return f
