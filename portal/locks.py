"""One holder at a time across processes and hosts, through the shared cache (Redis)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.core.cache import cache


@contextlib.contextmanager
def alone(key: str, timeout: float) -> Iterator[bool]:
    """Yields True to the one caller that got `key`, False to the others. The lock expires
    after `timeout` seconds, so a worker that dies holding it does not hold it for ever."""
    if not cache.add(key, "1", timeout=timeout):
        yield False
        return
    try:
        yield True
    finally:
        cache.delete(key)
