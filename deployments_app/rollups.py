"""Fold the prediction log into per-minute, per-hour and per-day rollups.

A beat task (`tasks.rollups_fold`) calls `prediction_rollups_fold` every
PORTAL_ROLLUP_SECONDS. The fold is idempotent: a run recomputes whole minutes from the raw
rows (delete, then insert the aggregate), then the hours and days those minutes belong to
from the minute and hour rollups, and moves the watermark `PredictionRollupState.folded_until`
forward, all in one transaction per chunk. A fold killed half way rolls back entirely, and
the next run refolds the same minutes, so nothing is counted twice or lost.

Which minutes: those that closed more than GRACE ago. A row's created_at is taken when its
call is answered, just before the group commit flushes it, so a row can become visible a
little after its minute closed; every run therefore also refolds the REFOLD minutes below
the watermark, which catches a row that committed late. Readers
(`portal.selectors`) add the raw rows from the watermark on, so pages stay exact and current.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Min
from django.utils import timezone

from deployments_app.callstats import Totals, ceil_to, floor_to, raw_totals
from deployments_app.models import PredictionLog, PredictionRollup, PredictionRollupState

GRACE = timedelta(seconds=10)
REFOLD = timedelta(minutes=5)
CHUNK = timedelta(hours=6)  # a first fold over a long history commits step by step

Resolution = PredictionRollup.Resolution
SECONDS = {Resolution.MINUTE: 60, Resolution.HOUR: 3600, Resolution.DAY: 86400}


def _minute_group_sql() -> str:
    if connection.vendor == "postgresql":
        minute = "(floor(extract(epoch FROM created_at) / 60))::bigint"
    else:
        minute = "(CAST(strftime('%%s', created_at) AS INTEGER) / 60)"
    # One text key per (minute, deployment, version), split again in Python.
    sep = "'|'"
    name = "deployment_name"
    version = "COALESCE(version_number, 0)"
    if connection.vendor == "postgresql":
        return f"({minute})::text || {sep} || {version}::text || {sep} || {name}"
    return f"CAST({minute} AS TEXT) || {sep} || CAST({version} AS TEXT) || {sep} || {name}"


def _rollup(resolution: str, start: datetime, name: str, version: int, t: Totals):
    return PredictionRollup(
        resolution=resolution,
        bucket_start=start,
        deployment_name=name,
        version_number=version,
        requests=t.requests,
        errors_4xx=t.errors_4xx,
        errors_5xx=t.errors_5xx,
        rows=t.rows,
        input_bytes=t.input_bytes,
        latency_ms_sum=t.latency_ms_sum,
        histogram={str(k): v for k, v in sorted(t.histogram.items())},
    )


def _fold_minutes(start: datetime, end: datetime) -> int:
    """Recompute the minute rollups of [start, end) from raw rows; how many calls."""
    totals = raw_totals(ranges=[(start, end)], group_sql=_minute_group_sql())
    PredictionRollup.objects.filter(
        resolution=Resolution.MINUTE, bucket_start__gte=start, bucket_start__lt=end
    ).delete()
    rollups = []
    for key, t in totals.items():
        minute, version, name = str(key).split("|", 2)
        moment = datetime.fromtimestamp(int(minute) * 60, tz=UTC)
        rollups.append(_rollup(Resolution.MINUTE, moment, name, int(version), t))
    PredictionRollup.objects.bulk_create(rollups, batch_size=1000)
    return sum(t.requests for t in totals.values())


def _fold_level(resolution: str, source: str, start: datetime, end: datetime) -> None:
    """Recompute `resolution` rollups of [floor(start), ceil(end)) from `source` rollups."""
    seconds = SECONDS[resolution]
    low, high = floor_to(start, seconds), ceil_to(end, seconds)
    groups: dict[tuple[datetime, str, int], Totals] = defaultdict(Totals)
    for r in PredictionRollup.objects.filter(
        resolution=source, bucket_start__gte=low, bucket_start__lt=high
    ).iterator(chunk_size=2000):
        groups[(floor_to(r.bucket_start, seconds), r.deployment_name, r.version_number)].add(r)
    PredictionRollup.objects.filter(
        resolution=resolution, bucket_start__gte=low, bucket_start__lt=high
    ).delete()
    PredictionRollup.objects.bulk_create(
        [_rollup(resolution, s, n, v, t) for (s, n, v), t in groups.items()], batch_size=1000
    )


@dataclass
class FoldReport:
    folded_from: datetime | None = None
    folded_until: datetime | None = None
    calls: int = 0
    chunks: int = 0


def fold_horizon(now: datetime) -> datetime:
    return floor_to(now - GRACE, 60)


def prediction_rollups_fold(*, now: datetime | None = None) -> FoldReport:
    """Fold every closed minute not yet folded (and refold the last REFOLD minutes)."""
    horizon = fold_horizon(now or timezone.now())
    report = FoldReport()
    PredictionRollupState.objects.get_or_create(pk=1)
    while True:
        with transaction.atomic():
            state = PredictionRollupState.objects.select_for_update().get(pk=1)
            if state.folded_until is None:
                oldest = PredictionLog.objects.aggregate(t=Min("created_at"))["t"]
                start = floor_to(oldest, 60) if oldest else horizon
                mark = start
            else:
                mark = state.folded_until
                start = mark - REFOLD if report.chunks == 0 else mark
            end = max(min(start + CHUNK, horizon), mark)
            if end <= start:
                break
            report.calls += _fold_minutes(start, end)
            _fold_level(Resolution.HOUR, Resolution.MINUTE, start, end)
            _fold_level(Resolution.DAY, Resolution.HOUR, start, end)
            state.folded_until = end
            state.save(update_fields=["folded_until", "updated_at"])
            report.folded_from = report.folded_from or start
            report.folded_until = end
            report.chunks += 1
        if end >= horizon:
            break
    return report


def folded_until() -> datetime | None:
    return PredictionRollupState.objects.filter(pk=1).values_list("folded_until", flat=True).first()
