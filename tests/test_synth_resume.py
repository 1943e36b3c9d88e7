"""Kill -9 a real `qzhou synth` process mid-run, run the same command again: no finished request is sent twice,
no result is lost, no output row is duplicated."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import time

from synth_helpers import qzhou_subprocess, read_jsonl, retrieval_rows, write_jsonl

from qzhou.synthesis.stub_server import StubServer

N = 60


def server_key(messages: list[dict]) -> str:
    """The stub server's name for a request (see StubServer.decide)."""
    return hashlib.sha256(json.dumps(messages[:2], sort_keys=True).encode()).hexdigest()[:16]


def done_keys(store) -> set[str]:
    db = sqlite3.connect(store)
    try:
        rows = db.execute("SELECT request FROM requests WHERE status = 'done'").fetchall()
    finally:
        db.close()
    return {server_key(json.loads(r[0])) for r in rows}


def test_kill_9_then_resume(tmp_path):
    inp = write_jsonl(tmp_path / "r.jsonl", retrieval_rows(N))
    out, store = tmp_path / "p.jsonl", tmp_path / "p.jsonl.jobs.sqlite"
    with StubServer(latency=0.05) as s:
        argv = ["synth", "paraphrase", "--input", inp, "--output", out, "--base-url", s.url, "--model", "stub",
                "--concurrency", "2", "--quiet"]
        first = qzhou_subprocess(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while sum(s.served.values()) < 15 and time.time() < deadline and first.poll() is None:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert first.returncode == -signal.SIGKILL, first.stderr.read().decode()[-2000:]
        assert not out.exists()  # the output is only published at the end

        before = done_keys(store)
        served_before = set(s.served)
        assert 10 <= len(before) < N
        assert len(served_before - before) <= 2  # answered but not journaled: the in-flight ones (concurrency 2)
        log_len = len(s.log)

        second = qzhou_subprocess(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = second.communicate(timeout=120)
        assert second.returncode == 0, stderr.decode()[-2000:]
        asked_again = {key for key, _ in s.log[log_len:]}

    assert not asked_again & before  # no finished request was sent twice
    assert len(asked_again) == N - len(before)
    summary = json.loads(stdout)
    assert summary["journal"]["done"] == N and summary["written"] == N
    rows = read_jsonl(out)
    assert len(rows) == N and len({r["id"] for r in rows}) == N  # no lost result, no duplicate row
    assert [r["source"]["record"] for r in rows] == [f"r{i}" for i in range(N)]  # input order
