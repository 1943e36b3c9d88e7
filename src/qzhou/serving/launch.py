"""Start a server (`qzhou serve`, or anything with `GET /health`) in a child process and wait until it is ready,
on a free local port: how the serving benchmark and tests start theirs, in one place."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], url: str, env: dict[str, str] | None = None,
                 timeout: float = 180) -> subprocess.Popen:
    """Run `cmd` and return its process once `GET {url}/health` answers 200. If it exits first, or is not ready
    within `timeout` seconds (then it is killed), raise with the end of its output."""
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:  # not listening yet, or 503 while it loads and warms up
            pass
        time.sleep(0.2)
    why = f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready after {timeout:g} s"
    proc.kill()
    proc.wait()
    log.seek(0)
    raise RuntimeError(f"{' '.join(cmd)}: {why}:\n{log.read()[-4000:]}")
