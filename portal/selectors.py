"""Read-side queries of the core app: worker health and audit review.

The core knows no app (imports point `deployments_app -> models_app -> portal`): the apps'
figures reach the dashboard and the audit page through `portal.registry`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import asdict
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q, QuerySet
from django.utils import timezone

from portal.audit import ChainReport
from portal.heartbeat import live_workers
from portal.models import AuditEvent

logger = logging.getLogger(__name__)

# Written by deployments_app.tasks.reconcile after each run (cache, no expiry).
RECONCILE_LAST_KEY = "portal:reconcile-last"
WORKER_PING_KEY = "portal:worker-ping"
# Reaching the broker may take its connect timeout: cache the answer so a polling page does
# not pay it on every request.
WORKER_PING_CACHE_SECONDS = 5
AUDIT_VERIFY_KEY = "portal:audit-verify"


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


# ---------------------------------------------------------------------- audit review


def day_bounds(since: date | None, until: date | None) -> tuple[datetime | None, ...]:
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
    start, end = day_bounds(filters.get("since"), filters.get("until"))
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


def audit_last_verification() -> dict[str, Any] | None:
    """The cached result of the last on-demand chain check, or None."""
    result = cache.get(AUDIT_VERIFY_KEY)
    if result and isinstance(result.get("at"), str):
        with contextlib.suppress(ValueError):
            result["at"] = datetime.fromisoformat(result["at"])
    return result


def audit_verification_payload(report: ChainReport, *, by: str) -> dict[str, Any]:
    return asdict(report) | {"at": timezone.now().isoformat(), "by": by}
