"""Prometheus metrics of the prediction proxy (multi-process safe under gunicorn)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "portal_predictions_total",
    "Prediction calls answered by the proxy",
    ["deployment", "version", "status"],
)
LATENCY = Histogram(
    "portal_prediction_seconds",
    "Total proxy latency of prediction calls",
    ["deployment", "version", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


# Invalid-key calls are counted here, not logged one row each: their names are the caller's.
INVALID_KEYS = Counter(
    "portal_prediction_invalid_keys_total",
    "Prediction calls refused for an invalid API key (401) or too many of them (429)",
    ["status"],
)


def observe(deployment: str, version: int | None, status: int, seconds: float) -> None:
    labels = (deployment, str(version or ""), str(status))
    REQUESTS.labels(*labels).inc()
    LATENCY.labels(*labels).observe(seconds)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
