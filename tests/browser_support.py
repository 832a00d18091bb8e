"""What the browser tests share: where Chromium is, a free port, and the Streamlit server's health check."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright must never download its own


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    """Whether the Streamlit server at ``url`` answers its health endpoint."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_until_healthy(proc, url: str, log, limit_s: float, what: str = "streamlit") -> None:
    """Wait on state: until the server at ``url`` answers its health endpoint, failing with the server's log
    when its process ``proc`` exits first or ``limit_s`` passes. ``log`` is the file its output goes to."""
    import time

    import pytest

    deadline = time.monotonic() + limit_s
    while not healthy(url):
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read().decode(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer {url}/_stcore/health within {limit_s} s")
        time.sleep(0.5)


def stop_server(proc, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if the server has not exited within ``timeout_s``."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)
