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
