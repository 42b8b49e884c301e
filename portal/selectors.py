"""Read-side queries of the core app: dashboard figures, worker health, audit review.

Models of the other apps are looked up by label so the core does not import them
(imports point `deployments_app -> models_app -> portal`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from portal import latency
from portal.audit import ChainReport
from portal.callstats import LEVELS, Totals, ceil_to, window_totals
from portal.heartbeat import live_workers
from portal.models import AuditEvent

logger = logging.getLogger(__name__)

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

# Written by deployments_app.tasks.reconcile after each run (cache, no expiry).
RECONCILE_LAST_KEY = "portal:reconcile-last"
WORKER_PING_KEY = "portal:worker-ping"
# Reaching the broker may take its connect timeout: cache the answer so a polling page does
# not pay it on every request.
WORKER_PING_CACHE_SECONDS = 5
AUDIT_VERIFY_KEY = "portal:audit-verify"


def _prediction_log():
    return apps.get_model("deployments_app", "PredictionLog")


def _deployment_model():
    return apps.get_model("deployments_app", "Deployment")


# ------------------------------------------------------------------------------- counts


def portal_summary() -> dict[str, Any]:
    """Counts for the home page."""
    summary: dict[str, Any] = {}
    Model = apps.get_model("models_app", "RegisteredModel")  # noqa: N806
    Version = apps.get_model("models_app", "ModelVersion")  # noqa: N806
    summary["models"] = Model.objects.count()
    summary["versions_by_status"] = dict(
        Version.objects.values_list("status").annotate(n=Count("id")).order_by("status")
    )
    summary["deployments_by_state"] = dict(
        _deployment_model().objects.values_list("state").annotate(n=Count("id")).order_by("state")
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

    Read from rollups plus the raw rows not folded yet (portal.callstats), over the window's
    whole minutes; percentiles come from latency buckets (portal.latency), within one bucket
    (12 %) of the exact value."""
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
        _deployment_model()
        .objects.select_related("model", "version")
        .annotate(
            healthy_replicas=Count("replica_set", filter=Q(replica_set__healthy=True)),
        )
        .order_by("name")
    )
    return [{"deployment": d, "stats": stats.get(d.name, CallStats())} for d in deployments]


def recent_predictions(*, deployment_name: str, limit: int = 20) -> QuerySet:
    # Newest first by time, so the (deployment_name, created_at) index answers it from the
    # newest partition alone, however long the history.
    return (
        _prediction_log()
        .objects.filter(deployment_name=deployment_name)
        .order_by("-created_at", "-id")[:limit]
    )


# ---------------------------------------------------------------------- worker health


def _ping_workers() -> dict[str, Any]:
    """Which workers answer: those of this instance whose heartbeat is fresh and that take
    the portal's tasks (portal.heartbeat), not a broadcast ping, which a busy worker may
    answer too late; and whether the broker is reachable."""
    from portal.celery import app

    workers = live_workers(queue=app.conf.task_default_queue)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001 - any broker failure means "no worker answers"
        logger.warning("broker unreachable: %s", exc)
        return {"workers": [], "broker_ok": False, "broker_error": str(exc)[:200]}
    return {"workers": workers, "broker_ok": True, "broker_error": ""}


def _queue_length(queue: str) -> int | None:
    """Messages waiting in the default queue: LLEN on Redis, files on the file broker."""
    url = settings.CELERY_BROKER_URL
    try:
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
            # kombu keeps one list per priority step; the plain name holds priority 0.
            names = [queue] + [f"{queue}\x06\x16{p}" for p in (3, 6, 9)]
            with client.pipeline() as pipe:
                for name in names:
                    pipe.llen(name)
                return int(sum(pipe.execute()))
        if url.startswith("filesystem://"):
            folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
            return sum(1 for _ in folder.glob(f"*.{queue}.msg"))
    except Exception as exc:  # noqa: BLE001 - a figure we cannot read is shown as unknown
        logger.warning("queue length unavailable: %s", exc)
    return None


def worker_health(*, refresh: bool = False) -> dict[str, Any]:
    """Are workers alive, how long is the queue, when did the reconciler last run."""
    from portal.celery import app

    key = f"{WORKER_PING_KEY}:{settings.PORTAL_INSTANCE}"  # portals may share one Redis
    ping = None if refresh else cache.get(key)
    if ping is None:
        ping = _ping_workers() | {"checked_at": timezone.now().isoformat()}
        cache.set(key, ping, WORKER_PING_CACHE_SECONDS)
    queue = app.conf.task_default_queue
    last = cache.get(RECONCILE_LAST_KEY)
    last_at = datetime.fromisoformat(last) if isinstance(last, str) else None
    # Beat runs the reconciler every PORTAL_RECONCILE_SECONDS; three missed runs is a problem.
    stale_after = max(60.0, 3 * float(getattr(settings, "PORTAL_RECONCILE_SECONDS", 10)))
    reconcile_stale = last_at is None or (timezone.now() - last_at).total_seconds() > stale_after
    return {
        **ping,
        "alive": bool(ping["workers"]),
        "queue": queue,
        "queue_length": _queue_length(queue),
        "reconcile_last": last_at.isoformat() if last_at else None,
        "reconcile_last_at": last_at,
        "reconcile_stale": reconcile_stale,
    }


def dashboard(*, range_key: str = DEFAULT_RANGE) -> dict[str, Any]:
    """Everything the live part of the dashboard shows (the charts come separately)."""
    stats = deployment_call_stats(window_seconds=3600)
    overall = _overall(stats)
    return {
        "summary": portal_summary(),
        "cards": deployment_cards(stats=stats),
        "overall": overall,
        "health": worker_health(),
        "range": range_key if range_key in RANGES else DEFAULT_RANGE,
    }


def _overall(stats: Mapping[str, CallStats]) -> CallStats:
    requests = sum(s.requests for s in stats.values())
    errors = sum(s.errors for s in stats.values())
    return CallStats(
        requests=requests,
        errors=errors,
        per_minute=round(requests / 60, 2),
        error_rate=round(100.0 * errors / requests, 2) if requests else None,
    )


# ---------------------------------------------------------------------- audit review


def _day_bounds(since: date | None, until: date | None) -> tuple[datetime | None, ...]:
    tz = timezone.get_current_timezone()
    start = datetime.combine(since, time.min, tzinfo=tz) if since else None
    end = datetime.combine(until + timedelta(days=1), time.min, tzinfo=tz) if until else None
    return start, end


def audit_event_list(*, filters: Mapping[str, Any]) -> QuerySet[AuditEvent]:
    qs = AuditEvent.objects.order_by("-id")
    if actor := filters.get("actor"):
        qs = qs.filter(actor_name__icontains=actor)
    if action := filters.get("action"):
        qs = qs.filter(action__startswith=action)
    if target := filters.get("target"):
        qs = qs.filter(target_name__icontains=target)
    if outcome := filters.get("outcome"):
        qs = qs.filter(outcome=outcome)
    start, end = _day_bounds(filters.get("since"), filters.get("until"))
    if start:
        qs = qs.filter(created_at__gte=start)
    if end:
        qs = qs.filter(created_at__lt=end)
    if q := filters.get("q"):
        qs = qs.filter(
            Q(actor_name__icontains=q)
            | Q(action__icontains=q)
            | Q(target_name__icontains=q)
            | Q(request_id__icontains=q)
            | Q(details__icontains=q)
        )
    return qs


def prediction_log_list(*, filters: Mapping[str, Any]) -> QuerySet:
    qs = _prediction_log().objects.order_by("-id")
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
    start, end = _day_bounds(filters.get("since"), filters.get("until"))
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
    return list(_deployment_model().objects.order_by("name").values_list("name", flat=True))


def audit_last_verification() -> dict[str, Any] | None:
    """The cached result of the last on-demand chain check, or None."""
    result = cache.get(AUDIT_VERIFY_KEY)
    if result and isinstance(result.get("at"), str):
        with contextlib.suppress(ValueError):
            result["at"] = datetime.fromisoformat(result["at"])
    return result


def audit_verification_payload(report: ChainReport, *, by: str) -> dict[str, Any]:
    return asdict(report) | {"at": timezone.now().isoformat(), "by": by}
