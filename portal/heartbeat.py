"""Heartbeats for long task bodies: the reconciler tells slow work from dead work by them."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

from django.conf import settings
from django.db import connection

log = logging.getLogger(__name__)


def beat_interval() -> float:
    """Beat four times per `PORTAL_STALE_SECONDS`, so one late beat is never taken for death."""
    return max(1.0, settings.PORTAL_STALE_SECONDS / 4)


@contextlib.contextmanager
def beating(beat: Callable[[], None], *, name: str) -> Iterator[None]:
    """Call `beat` every `beat_interval()` seconds from a thread while the block runs.

    A thread, because the slow steps (a pip install inside a docker build, building a
    virtual environment, the sandbox) block for minutes without calling back.
    """
    stop = threading.Event()
    interval = beat_interval()

    def run() -> None:
        try:
            while not stop.wait(interval):
                try:
                    beat()
                except Exception:  # noqa: BLE001 - a missed beat only risks a needless retry
                    log.warning("heartbeat %s failed", name, exc_info=True)
        finally:
            connection.close()  # the thread's own database connection

    thread = threading.Thread(target=run, name=f"heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------- worker liveness


def _workers_key() -> str:
    return f"portal:{settings.PORTAL_INSTANCE}:workers"


def _worker_key(hostname: str) -> str:
    return f"portal:{settings.PORTAL_INSTANCE}:worker:{hostname}"


def worker_beat(*, hostname: str, queues: list[str]) -> None:
    """Say this worker is alive for three beats; keep its name in this instance's roster."""
    from django.core.cache import cache

    ttl = 3 * settings.PORTAL_WORKER_HEARTBEAT_SECONDS
    cache.set(_worker_key(hostname), {"queues": queues}, timeout=ttl)
    names = cache.get(_workers_key()) or []
    if hostname not in names:
        # Written rarely (a worker's first beat, or after a lost race, healed on the next
        # beat); names whose beats stopped are dropped then.
        alive = cache.get_many([_worker_key(n) for n in names])
        roster = [n for n in names if _worker_key(n) in alive] + [hostname]
        cache.set(_workers_key(), roster, timeout=None)


def worker_gone(*, hostname: str) -> None:
    from django.core.cache import cache

    cache.delete(_worker_key(hostname))


def live_workers(*, queue: str) -> list[str]:
    """Workers of this instance whose heartbeat is fresh and that take tasks from `queue`."""
    from django.core.cache import cache

    names = cache.get(_workers_key()) or []
    beats = cache.get_many([_worker_key(n) for n in names])
    return sorted(n for n in names if queue in (beats.get(_worker_key(n)) or {}).get("queues", []))


def worker_heartbeat_start(*, hostname: str, queues: list[str]) -> threading.Event:
    """Beat from a thread of the worker's main process until the returned event is set.

    Not a broadcast ping answered by the worker's event loop: a worker busy with tasks (or a
    machine busy with its builds) may answer that later than a page can wait, and the page
    would say no worker answers while one works.
    """
    stop = threading.Event()

    def run() -> None:
        while True:
            try:
                worker_beat(hostname=hostname, queues=queues)
            except Exception:  # noqa: BLE001 - the cache may be down for a moment
                log.warning("worker heartbeat failed", exc_info=True)
            if stop.wait(settings.PORTAL_WORKER_HEARTBEAT_SECONDS):
                return

    threading.Thread(target=run, name="portal-worker-heartbeat", daemon=True).start()
    return stop
