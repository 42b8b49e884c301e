"""Prediction figures for pages: call statistics, chart series, the log's review.

Read from rollups plus the raw rows not folded yet (deployments_app.callstats); the core's
dashboard and audit pages show them through the panels in deployments_app.panels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from deployments_app.callstats import LEVELS, Totals, ceil_to, window_totals
from deployments_app.models import Deployment, PredictionLog
from models_app.models import ModelVersion, RegisteredModel
from portal import latency
from portal.selectors import day_bounds

# range key -> (window seconds, bucket seconds): 24-60 points per chart. Buckets are whole
# rollups (minute, hour), so a day is 24 hourly points: 30-minute points would need 1,440
# minute rollups per deployment on every poll.
RANGES: dict[str, tuple[int, int]] = {
    "hour": (3600, 60),
    "day": (86400, 3600),
    "week": (7 * 86400, 4 * 3600),
}
DEFAULT_RANGE = "hour"
PERCENTILES = (0.5, 0.95, 0.99)
# A call counts as an error when the portal did not answer it with 2xx/3xx.
ERROR_STATUS = 400


# ------------------------------------------------------------------------------- counts


def dashboard_counts() -> dict[str, Any]:
    """Counts for the home page."""
    summary: dict[str, Any] = {}
    summary["models"] = RegisteredModel.objects.count()
    summary["versions_by_status"] = dict(
        ModelVersion.objects.values_list("status").annotate(n=Count("id")).order_by("status")
    )
    summary["deployments_by_state"] = dict(
        Deployment.objects.values_list("state").annotate(n=Count("id")).order_by("state")
    )
    summary["versions"] = sum(summary["versions_by_status"].values())
    summary["deployments"] = sum(summary["deployments_by_state"].values())
    return summary


# ------------------------------------------------------------------- prediction figures


def _bucket_sql(step: int) -> str:
    if connection.vendor == "postgresql":
        return f"(floor(extract(epoch FROM created_at) / {int(step)}))::bigint"
    return f"(CAST(strftime('%%s', created_at) AS INTEGER) / {int(step)})"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


@dataclass
class CallStats:
    requests: int = 0
    errors: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    per_minute: float = 0.0
    error_rate: float | None = None  # percent, None when there were no calls

    @classmethod
    def from_totals(cls, totals: Totals, minutes: float) -> CallStats:
        requests, errors = totals.requests, totals.errors
        p50, p95, p99 = (_round(p) for p in latency.quantiles(totals.histogram, PERCENTILES))
        return cls(
            requests=requests,
            errors=errors,
            p50=p50,
            p95=p95,
            p99=p99,
            per_minute=round(requests / minutes, 2),
            error_rate=round(100.0 * errors / requests, 2) if requests else None,
        )


def deployment_call_stats(
    *, window_seconds: int = 3600, deployment_name: str | None = None
) -> dict[str, CallStats]:
    """Requests per minute, latency percentiles and error rate per deployment name.

    Read from rollups plus the raw rows not folded yet (deployments_app.callstats), over the
    window's whole minutes; percentiles come from latency buckets (portal.latency), within one
    bucket (12 %) of the exact value."""
    now = timezone.now()
    # From the first whole minute in the window: whole minute rollups, no raw head to scan.
    totals = window_totals(
        since=ceil_to(now - timedelta(seconds=window_seconds), 60),
        now=now,
        deployment_name=deployment_name,
        raw_group_sql="deployment_name",
        rollup_key=lambda _start, name, _version: name,
    )
    minutes = window_seconds / 60
    return {name: CallStats.from_totals(t, minutes) for name, t in sorted(totals.items())}


def prediction_series(
    *, range_key: str = DEFAULT_RANGE, deployment_name: str | None = None
) -> dict[str, Any]:
    """Requests, errors and latency percentiles per time bucket, gaps filled with zeros."""
    window, step = RANGES.get(range_key, RANGES[DEFAULT_RANGE])
    now = timezone.now()
    first = math.floor((now.timestamp() - window) / step) + 1
    last = math.floor(now.timestamp() / step)
    since = datetime.fromtimestamp(first * step, tz=UTC)
    # The largest rollup that fits a chart bucket: hours for 4 h buckets, minutes for 30 min.
    largest = max(seconds for seconds, _ in LEVELS if step % seconds == 0)
    totals = window_totals(
        since=since,
        now=now,
        deployment_name=deployment_name,
        raw_group_sql=_bucket_sql(step),
        rollup_key=lambda start, _name, _version: int(start.timestamp()) // step,
        largest=largest,
    )
    rows = {int(bucket): t for bucket, t in totals.items()}
    labels, requests, errors, p50, p95, p99 = [], [], [], [], [], []
    for bucket in range(first, last + 1):
        t = rows.get(bucket) or Totals()
        q50, q95, q99 = latency.quantiles(t.histogram, PERCENTILES)
        labels.append(datetime.fromtimestamp(bucket * step, tz=UTC).isoformat())
        requests.append(t.requests)
        errors.append(t.errors)
        p50.append(_round(q50))
        p95.append(_round(q95))
        p99.append(_round(q99))
    total = sum(requests)
    return {
        "range": range_key if range_key in RANGES else DEFAULT_RANGE,
        "bucket_seconds": step,
        "deployment": deployment_name or "",
        "labels": labels,
        "requests": requests,
        "errors": errors,
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "total_requests": total,
        "total_errors": sum(errors),
    }


def deployment_cards(*, stats: Mapping[str, CallStats]) -> list[dict[str, Any]]:
    """One entry per deployment: state, healthy/desired replicas, version, call figures."""
    deployments = (
        Deployment.objects.select_related("model", "version")
        .annotate(
            healthy_replicas=Count("replica_set", filter=Q(replica_set__healthy=True)),
        )
        .order_by("name")
    )
    return [{"deployment": d, "stats": stats.get(d.name, CallStats())} for d in deployments]


def recent_predictions(*, deployment_name: str, limit: int = 20) -> QuerySet:
    # Newest first by time, so the (deployment_name, created_at) index answers it from the
    # newest partition alone, however long the history.
    return PredictionLog.objects.filter(deployment_name=deployment_name).order_by(
        "-created_at", "-id"
    )[:limit]


def overall_stats(stats: Mapping[str, CallStats]) -> CallStats:
    requests = sum(s.requests for s in stats.values())
    errors = sum(s.errors for s in stats.values())
    return CallStats(
        requests=requests,
        errors=errors,
        per_minute=round(requests / 60, 2),
        error_rate=round(100.0 * errors / requests, 2) if requests else None,
    )


# ------------------------------------------------------------------------ log review


def prediction_log_list(*, filters: Mapping[str, Any]) -> QuerySet:
    qs = PredictionLog.objects.order_by("-id")
    if deployment := filters.get("deployment"):
        qs = qs.filter(deployment_name=deployment)
    if actor := filters.get("actor"):
        qs = qs.filter(caller__icontains=actor)
    if target := filters.get("target"):
        qs = qs.filter(model_name__icontains=target)
    outcome = filters.get("outcome")
    if outcome == "success":
        qs = qs.filter(status_code__lt=ERROR_STATUS)
    elif outcome == "failure":
        qs = qs.filter(status_code__gte=ERROR_STATUS)
    elif outcome == "denied":
        qs = qs.filter(status_code__in=(401, 403, 429))
    start, end = day_bounds(filters.get("since"), filters.get("until"))
    if start:
        qs = qs.filter(created_at__gte=start)
    if end:
        qs = qs.filter(created_at__lt=end)
    if q := filters.get("q"):
        qs = qs.filter(
            Q(request_id__icontains=q)
            | Q(error__icontains=q)
            | Q(caller__icontains=q)
            | Q(deployment_name__icontains=q)
        )
    return qs


def deployment_names() -> list[str]:
    return list(Deployment.objects.order_by("name").values_list("name", flat=True))
