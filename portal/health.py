"""Readiness checks. Apps register their own (the runtime check lives in deployments_app)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection

CheckResult = tuple[bool, str]
_CHECKS: dict[str, Callable[[], CheckResult]] = {}


def register_check(name: str, func: Callable[[], CheckResult]) -> None:
    _CHECKS[name] = func


def check_database() -> CheckResult:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return True, connection.vendor


def check_broker() -> CheckResult:
    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        return _writable(folder), f"filesystem broker at {folder}"
    from kombu import Connection

    with Connection(url, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return True, url.split("@")[-1].split("://")[0] if "://" in url else "broker"


def _writable(folder: Path) -> bool:
    probe = folder / f".probe-{time.monotonic_ns()}"
    probe.write_bytes(b"ok")
    probe.unlink()
    return True


def check_artifacts() -> CheckResult:
    folder = Path(settings.PORTAL_ARTIFACT_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    return _writable(folder), str(folder)


register_check("database", check_database)
register_check("broker", check_broker)
register_check("artifact_storage", check_artifacts)


def run_checks() -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for name, func in _CHECKS.items():
        started = time.perf_counter()
        try:
            ok, detail = func()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", named below
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results[name] = {
            "ok": ok,
            "detail": detail,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
    return results
