"""With no DATABASE_URL, broker or Docker, `runportal` starts on embedded defaults."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
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
            "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
            # Beat ticks every second: a minute of `make run` in a few seconds of test.
            "PORTAL_RECONCILE_SECONDS": "1",
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
    # As scripts/run.sh does: production mode (the default) serves the collected, hashed files.
    subprocess.run(
        [*manage, "collectstatic", "--noinput", "--verbosity", "0"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (tmp_path / "data" / "secret.key").stat().st_mode & 0o777 == 0o600
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
        _production_pages_over_plain_http(f"http://127.0.0.1:{port}")
        time.sleep(6)  # beat and the reconciler run several times; Ctrl-C hits all three
        assert proc.poll() is None, "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert "Model Portal is running at" in output
    assert "stopped." in output
    # Quiet: no line per beat tick or per task run at the default level.
    for routine in ("Sending due task", "succeeded in", "] received"):
        assert routine not in output, output[-3000:]
    # no child survives: nothing else in the process group
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _production_pages_over_plain_http(base: str) -> None:
    """A fresh clone in a browser: http (no redirect to https, cookies it sends back), the
    hashed static files, and the portal's own 404 page (not Django's debug page)."""
    opener = urllib.request.build_opener(_NoRedirect)
    with opener.open(f"{base}/accounts/login/", timeout=10) as r:
        assert r.status == 200
        html = r.read().decode()
        cookies = r.headers.get_all("Set-Cookie") or []
    assert cookies and not any("secure" in c.lower() for c in cookies), cookies
    css = re.search(r'href="(/static/css/portal\.[0-9a-f]{12}\.css)"', html)
    assert css, html[:2000]
    with opener.open(base + css.group(1), timeout=10) as r:
        assert r.status == 200 and "immutable" in r.headers.get("Cache-Control", "")
    with pytest.raises(urllib.error.HTTPError) as missing:
        opener.open(f"{base}/no/such/page/", timeout=10)
    body = missing.value.read().decode()
    assert missing.value.code == 404 and "There is nothing at this address" in body
    assert "URLconf" not in body and "Django tried these URL patterns" not in body
