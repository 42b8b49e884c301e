"""With no DATABASE_URL, broker or Docker, `runportal` starts on embedded defaults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.services import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_embedded_defaults_start_serve_and_stop_cleanly(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "PORTAL_", "DATABASE_URL", "CELERY_", "REDIS_URL"))
    }
    env.update(
        {
            "PORTAL_DATA_DIR": str(tmp_path / "data"),
            "PORTAL_RUNTIME": "process",
            "PORTAL_ADMIN_PASSWORD": "embedded-admin-pw",
        }
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run(
        [*manage, "migrate", "--noinput"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=180,
    )
    created = subprocess.run(
        [*manage, "ensure_admin"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "created admin account" in created.stdout
    assert (tmp_path / "data" / "portal.sqlite3").exists()
    port = free_port()
    proc = subprocess.Popen(
        [*manage, "runportal", "--port", str(port), "--web-workers", "1", "--concurrency", "1"],
        env=env,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # Nothing is asked over HTTP before the worker is up: a fresh data directory must be
        # enough for it (once, only a /readyz call happened to create the broker's folders).
        deadline = time.monotonic() + 90
        while not any(line.rstrip().endswith("ready.") for line in list(lines)):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        wait_for_port(port, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert json.load(r) == {"status": "ok"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            checks = json.load(r)["checks"]
        assert checks["database"]["detail"] == "sqlite"
        assert "filesystem broker" in checks["broker"]["detail"]
        assert checks["runtime"]["detail"] == "local processes"
        time.sleep(2)  # let beat finish booting so Ctrl-C hits all three
        assert proc.poll() is None, "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert "Model Portal is running at" in output
    assert "stopped." in output
    # no child survives: nothing else in the process group
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
