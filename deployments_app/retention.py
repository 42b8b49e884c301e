"""Retention of the prediction log and its rollups.

Raw rows (and the payloads captured in them) are kept PORTAL_PREDICTION_LOG_DAYS days, hour
and day rollups PORTAL_ROLLUP_DAYS days, minute rollups as long as the raw rows but at least
MINUTE_ROLLUP_MIN_DAYS (the day chart is drawn from them). On PostgreSQL a daily partition
is dropped whole once all of it is older than the cutoff (so a day's rows may stay up to a
day longer); rows of expired days that landed in the default partition, and on SQLite the
rows older than the cutoff, are deleted in batches so no statement holds locks for long.
Raw rows not yet folded into rollups are never removed. Each run that removed something
writes one audit event saying what.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments_app import partitions, rollups
from deployments_app.callstats import floor_to
from deployments_app.models import PredictionLog, PredictionRollup
from portal.audit import Actor, audit_record

DELETE_BATCH = 5000
MINUTE_ROLLUP_MIN_DAYS = 2


@dataclass
class RetentionReport:
    log_cutoff: str = ""
    rollup_cutoff: str = ""
    partitions_dropped: list[str] = field(default_factory=list)
    partitions_created: list[str] = field(default_factory=list)
    rows_removed: int = 0
    minute_rollups_removed: int = 0
    rollups_removed: int = 0

    @property
    def removed_anything(self) -> bool:
        return bool(
            self.partitions_dropped
            or self.rows_removed
            or self.minute_rollups_removed
            or self.rollups_removed
        )


def _delete_in_batches(queryset) -> int:
    """DELETE_BATCH rows per statement and transaction, so no lock is held for long."""
    removed = 0
    while True:
        ids = list(queryset.order_by().values_list("pk", flat=True)[:DELETE_BATCH])
        if not ids:
            return removed
        with transaction.atomic():
            # The queryset's own filter stays, so PostgreSQL prunes partitions.
            removed += queryset.filter(pk__in=ids).delete()[0]


def _raw_remove(cutoff: datetime, report: RetentionReport) -> None:
    if partitions.is_partitioned():
        for part in partitions.partitions():
            if part.end <= cutoff:
                report.rows_removed += partitions.partition_rows(part)
                partitions.partition_drop(part)
                report.partitions_dropped.append(part.name)
        # A day goes whole once all of it expired, never row by row: what is left to
        # delete is only what the default partition caught.
        cutoff = floor_to(cutoff, 86400)
    report.rows_removed += _delete_in_batches(PredictionLog.objects.filter(created_at__lt=cutoff))


def prediction_log_retention_run(
    *, now: datetime | None = None, request_id: str = ""
) -> RetentionReport:
    """Make tomorrow's partitions, drop expired raw rows and rollups, audit what went."""
    now = now or timezone.now()
    log_cutoff = now - timedelta(days=settings.PORTAL_PREDICTION_LOG_DAYS)
    # Never drop raw rows the rollups do not hold yet (none before the first fold).
    folded = rollups.folded_until()
    log_cutoff = min(log_cutoff, folded) if folded else None
    minute_days = max(settings.PORTAL_PREDICTION_LOG_DAYS, MINUTE_ROLLUP_MIN_DAYS)
    minute_cutoff = now - timedelta(days=minute_days)
    rollup_cutoff = now - timedelta(days=settings.PORTAL_ROLLUP_DAYS)
    report = RetentionReport(
        log_cutoff=log_cutoff.isoformat() if log_cutoff else "",
        rollup_cutoff=rollup_cutoff.isoformat(),
    )
    if partitions.is_partitioned():
        report.partitions_created = partitions.partitions_ensure(today=now.date())
    if log_cutoff is not None:
        _raw_remove(log_cutoff, report)
    Resolution = PredictionRollup.Resolution  # noqa: N806
    report.minute_rollups_removed = _delete_in_batches(
        PredictionRollup.objects.filter(
            resolution=Resolution.MINUTE, bucket_start__lt=minute_cutoff
        )
    )
    report.rollups_removed = _delete_in_batches(
        PredictionRollup.objects.filter(
            resolution__in=(Resolution.HOUR, Resolution.DAY), bucket_start__lt=rollup_cutoff
        )
    )
    if report.removed_anything:
        details: dict[str, Any] = asdict(report)
        with transaction.atomic():
            audit_record(
                actor=Actor.system("retention", request_id=request_id),
                action="prediction_log.retention",
                target_type="predictionlog",
                target_name="prediction log",
                details=details,
            )
    return report
