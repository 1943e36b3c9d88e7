"""Helpers of the bad-input tests: the CLI as a subprocess and in this process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m qzhou.cli ARGS` in a fresh process (what a user runs; a traceback would show in stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, "-m", "qzhou.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (an uncaught exception, i.e. a traceback, fails the test): (exit code, out, err)."""
    from qzhou.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err
