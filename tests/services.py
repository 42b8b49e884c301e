"""Helpers for tests that need real services.

Locally a missing service skips the test with its name; under CI (`PORTAL_REQUIRE_SERVICES=1`,
set by scripts/test.sh) a missing service fails it, so a green run proves the real thing ran.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest


def require(condition: bool, what: str) -> None:
    if condition:
        return
    if os.environ.get("PORTAL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required in this run (PORTAL_REQUIRE_SERVICES=1) but missing")
    pytest.skip(f"{what} is not available on this machine; `make test` installs it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def redis_server(tmp_path: Path):
    """A private, real redis-server on a free loopback port, removed afterwards."""
    binary = shutil.which("redis-server")
    require(binary is not None, "redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
