"""Shadow traffic: a copy of sampled calls goes to the shadow version after the answer.

The pipeline attaches a `Copy` to an answered call when the deployment has a shadow and the
call is sampled; the driver hands it over *after* the answer is sent (`submit` here for the
blocking driver, `aio` for the event loop). A bounded queue sits between them: when it is
full the copy is dropped and counted, so the shadow never adds latency to a caller, never
changes an answer, never counts against a rate limit, and a dead shadow costs its queue
nothing but drops. One worker per process (thread) or per event loop forwards the copies
and writes the pairs in batches.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections
from prometheus_client import Counter

from deployments_app.predict.proxy import Backend, Forwarded, Target, UpstreamError

log = logging.getLogger(__name__)
BATCH = 200
FLUSH_SECONDS = 1.0  # pairs are written at most this late, in one INSERT per batch
SHADOW_CALLS = Counter(
    "portal_shadow_calls_total",
    "Shadow copies by outcome (sent, failed, dropped: the queue was full)",
    ["deployment", "outcome"],
)


@dataclass
class Copy:
    """One answered call, to be replayed on the shadow version."""

    target: Target
    backend: Backend
    body: bytes
    request_id: str
    primary_version: int
    primary: dict[str, Any]
    primary_ms: float
    created_at: datetime


def pair(copy: Copy, result: Forwarded | None, error: UpstreamError | Exception | None) -> dict:
    """The ShadowPair row of a replayed copy."""
    status = 200 if result is not None else getattr(error, "status", 502)
    return {
        "deployment_name": copy.target.name,
        "created_at": copy.created_at,
        "request_id": copy.request_id,
        "primary_version": copy.primary_version,
        "shadow_version": copy.backend.version_number,
        "primary_ms": copy.primary_ms,
        "shadow_ms": result.upstream_ms if result is not None else None,
        "shadow_status": status,
        "primary": _outputs(copy.primary),
        "shadow": _outputs(result.body) if result is not None else None,
        "error": "" if error is None else str(getattr(error, "message", error))[:500],
    }


def _outputs(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: answer[k] for k in ("predictions", "probabilities") if k in answer}


def write_pairs(rows: list[dict]) -> None:
    """One INSERT for a batch of pairs. Without waiting for the disk on PostgreSQL: a pair is
    a sample for a report, and a second flush to disk per call would slow the log commit
    that every answer waits for (a crash may lose the last second of pairs, never a row)."""
    from django.db import connection, transaction

    from deployments_app.models import ShadowPair

    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        ShadowPair.objects.bulk_create([ShadowPair(**row) for row in rows])


# --------------------------------------------------------------------------- the thread


class _Worker:
    """The blocking side's queue and its one thread (started on the first copy)."""

    def __init__(self, forward: Callable[[Target, Backend, bytes], Forwarded]) -> None:
        self.forward = forward
        self.queue: queue.Queue[Copy] = queue.Queue(maxsize=settings.PORTAL_SHADOW_QUEUE)
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()

    def submit(self, copy: Copy) -> bool:
        self.idle.clear()  # before the put: the worker sets it once this copy is written
        try:
            self.queue.put_nowait(copy)
        except queue.Full:
            SHADOW_CALLS.labels(copy.target.name, "dropped").inc()
            return False
        if self.thread is None or not self.thread.is_alive():
            with self.lock:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(
                        target=self._run, name="portal-shadow", daemon=True
                    )
                    self.thread.start()
        return True

    def _run(self) -> None:
        rows: list[dict] = []
        flushed = time.monotonic()
        while True:
            try:
                copy = self.queue.get(timeout=FLUSH_SECONDS if rows else None)
            except queue.Empty:
                copy = None
            if copy is not None:
                rows.append(self._replay(copy))
            due = copy is None or len(rows) >= BATCH
            if rows and (due or time.monotonic() - flushed >= FLUSH_SECONDS):
                try:
                    write_pairs(rows)
                except Exception:  # noqa: BLE001 - a lost pair must not stop the worker
                    log.exception("could not record %d shadow pair(s)", len(rows))
                finally:
                    if self.queue.empty():  # idle: hold no database connection meanwhile
                        connections.close_all()
                    else:
                        close_old_connections()  # as a request would: CONN_MAX_AGE decides
                rows, flushed = [], time.monotonic()
            if not rows and self.queue.empty():
                self.idle.set()

    def _replay(self, copy: Copy) -> dict:
        try:
            result = self.forward(copy.target, copy.backend, copy.body)
        except Exception as exc:  # noqa: BLE001 - the shadow's failure is its record
            SHADOW_CALLS.labels(copy.target.name, "failed").inc()
            return pair(copy, None, exc)
        SHADOW_CALLS.labels(copy.target.name, "sent").inc()
        return pair(copy, result, None)


_worker: _Worker | None = None


def submit(copy: Copy | None) -> None:
    """Queue a copy for the blocking side's worker (no-op for None)."""
    global _worker
    if copy is None:
        return
    if _worker is None:
        from deployments_app.predict import proxy

        _worker = _Worker(proxy.forward)
    _worker.submit(copy)


def drain(timeout: float = 30.0) -> bool:
    """Wait until the blocking side's queue is empty and its pairs written (tests)."""
    if _worker is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _worker.idle.wait(0.05) and _worker.queue.empty():
            return True
    return False


def now() -> datetime:
    return datetime.now(UTC)
