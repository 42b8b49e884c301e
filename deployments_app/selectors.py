"""Deployment reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count, QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from deployments_app.models import Deployment, PredictionLog, Replica, Rollout, ShadowPair
from deployments_app.rollouts import active_rollout


def deployment_list() -> QuerySet[Deployment]:
    return (
        Deployment.objects.select_related("model", "version")
        .prefetch_related("replica_set")
        .order_by("name")
    )


def deployment_get(*, name: str) -> Deployment:
    return get_object_or_404(
        Deployment.objects.select_related("model", "version", "previous_version"), name=name
    )


LIVE_SHARE_WINDOW = timedelta(minutes=5)


def live_shares(*, deployment_name: str, now: datetime | None = None) -> dict[int, float]:
    """Version number -> its share of the calls answered 200 over the last five minutes
    (the (deployment_name, created_at) index bounds the scan)."""
    since = (now or timezone.now()) - LIVE_SHARE_WINDOW
    counts = {
        row["version_number"]: row["n"]
        for row in PredictionLog.objects.filter(
            deployment_name=deployment_name, created_at__gte=since, status_code=200
        )
        .order_by()  # the model's ordering would add id to the GROUP BY
        .values("version_number")
        .annotate(n=Count("id"))
        if row["version_number"] is not None
    }
    total = sum(counts.values())
    return {number: round(n / total, 4) for number, n in counts.items()} if total else {}


def rollout_status(deployment: Deployment, *, now: datetime | None = None) -> dict[str, Any]:
    """The active rollout, else the last one (id None when there never was one), with each
    version's healthy replicas and live share of the traffic."""
    now = now or timezone.now()
    rollout = active_rollout(deployment) or (
        Rollout.objects.filter(deployment=deployment)
        .prefetch_related("candidates__version")
        .order_by("-id")
        .first()
    )
    healthy = dict(
        Replica.objects.filter(deployment=deployment, healthy=True)
        .order_by()
        .values_list("version_number")
        .annotate(n=Count("id"))
    )
    shares = live_shares(deployment_name=deployment.name, now=now)

    def side(number: int) -> dict[str, Any]:
        return {
            "version": number,
            "healthy_replicas": healthy.get(number, 0),
            "live_share": shares.get(number, 0.0),
        }

    stable = side(deployment.version.number) | {"weight": 100}
    if rollout is None:
        return {"id": None, "status": None, "plan": None, "steps": [], "step": 0,
                "bake_seconds": None, "bake_left_s": None, "auto_promote": False,
                "guardrails": {}, "sticky_header": "", "verdict": "", "decision": {},
                "created_at": None, "finished_at": None, "candidates": [],
                "stable": stable}  # fmt: skip
    candidates = [side(c.version.number) | {"weight": c.weight} for c in rollout.candidates.all()]
    # The configured remainder (the proxy also gives stable a starting candidate's share).
    stable["weight"] = 100 - sum(c["weight"] for c in candidates)
    bake_left = None
    if rollout.status == Rollout.Status.ACTIVE:
        started = rollout.step_started_at or rollout.created_at
        bake_left = max(0, rollout.bake_seconds - int((now - started).total_seconds()))
    return {
        "id": rollout.pk,
        "status": rollout.status,
        "plan": rollout.plan,
        "steps": rollout.steps,
        "step": rollout.step,
        "bake_seconds": rollout.bake_seconds,
        "bake_left_s": bake_left,
        "auto_promote": rollout.auto_promote,
        "guardrails": rollout.guardrails,
        "sticky_header": rollout.sticky_header,
        "verdict": rollout.verdict,
        "decision": rollout.decision,
        "created_at": rollout.created_at,
        "finished_at": rollout.finished_at,
        "candidates": candidates,
        "stable": stable,
    }


def shadow_latency_series(
    *, deployment_name: str, since: datetime, bucket: timedelta = timedelta(minutes=5)
) -> dict[str, list]:
    """Primary and shadow p50 latency per bucket since `since` (answered shadow calls only;
    the newest 20,000 pairs at most: the chart is a glance, the report has the figures)."""
    rows = list(
        ShadowPair.objects.filter(
            deployment_name=deployment_name, created_at__gte=since, shadow_status=200
        ).values_list("created_at", "primary_ms", "shadow_ms")[:20000]
    )
    width = bucket.total_seconds()
    buckets: dict[int, tuple[list[float], list[float]]] = {}
    for at, primary_ms, shadow_ms in rows:
        mine, theirs = buckets.setdefault(int(at.timestamp() // width), ([], []))
        mine.append(primary_ms)
        if shadow_ms is not None:
            theirs.append(shadow_ms)

    def p50(values: list[float]) -> float | None:
        return round(sorted(values)[len(values) // 2], 2) if values else None

    keys = sorted(buckets)
    return {
        "labels": [datetime.fromtimestamp(k * width, tz=UTC).isoformat() for k in keys],
        "primary_p50": [p50(buckets[k][0]) for k in keys],
        "shadow_p50": [p50(buckets[k][1]) for k in keys],
    }
