"""Retention of the prediction log: whole partitions dropped on PostgreSQL, batched deletes
elsewhere, rollups outlive raw rows, pages keep their numbers, each run is audited."""

# ruff: noqa: S311 - seeded synthetic data, not security
from __future__ import annotations

import random
from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings as dj_settings
from django.core.management import call_command
from django.utils import timezone

from deployments_app import partitions, retention, rollups
from deployments_app.models import PredictionLog, PredictionRollup
from deployments_app.predict import logwriter
from portal.models import AuditEvent
from tests.deployments_app.test_rollups import log_row, page_numbers, seed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _windows(settings):
    settings.PORTAL_PREDICTION_LOG_DAYS = 3
    settings.PORTAL_ROLLUP_DAYS = 30


def _at(days: float):
    return timezone.now() - timedelta(days=days)


def test_log_table_is_partitioned_by_day_on_postgresql():
    if dj_settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("partitions are a PostgreSQL feature; SQLite keeps a plain table")
    assert partitions.is_partitioned()
    days = [p.day for p in partitions.partitions()]
    assert timezone.now().date() in days
    # the group commit's INSERT into the parent lands in today's partition
    logwriter.write(log_row(timezone.now()))
    row = PredictionLog.objects.get()
    assert PredictionLog.objects.filter(pk=row.pk).delete()[0] == 1


def test_partition_create_moves_rows_the_default_partition_caught():
    if not partitions.is_partitioned():
        pytest.skip("PostgreSQL only")
    old = _at(9)
    PredictionLog.objects.create(**log_row(old))
    assert partitions.partition_create(day=old.date())
    assert not partitions.partition_create(day=old.date())  # idempotent
    assert (
        partitions.partition_rows(
            partitions.Partition(partitions.partition_name(old.date()), old.date())
        )
        == 1
    )
    assert PredictionLog.objects.count() == 1


def test_retention_drops_expired_partitions_keeps_the_rest_and_audits_it():
    for days in (10, 5, 1, 0):
        if partitions.is_partitioned():
            partitions.partition_create(day=_at(days).date())
        PredictionLog.objects.bulk_create(PredictionLog(**log_row(_at(days))) for _ in range(3))
    rollups.prediction_rollups_fold()

    report = retention.prediction_log_retention_run()

    kept = sorted(
        {
            (timezone.now() - r).days
            for r in PredictionLog.objects.values_list("created_at", flat=True)
        }
    )
    assert kept == [0, 1]
    assert report.rows_removed == 6
    if partitions.is_partitioned():
        gone = {partitions.partition_name(_at(d).date()) for d in (10, 5)}
        assert gone <= set(report.partitions_dropped)
        assert not gone & {p.name for p in partitions.partitions()}
        assert partitions.partition_name(timezone.now().date() + timedelta(days=3)) in {
            p.name for p in partitions.partitions()
        }
    # hour and day rollups outlive the raw rows; minute rollups go with them
    # (today's rows are younger than the fold's grace: not folded yet)
    assert PredictionRollup.objects.filter(resolution="day").count() == 3
    minutes = PredictionRollup.objects.filter(resolution="minute")
    assert not minutes.filter(bucket_start__lt=_at(4)).exists()
    assert minutes.filter(bucket_start__gte=_at(2)).exists()
    event = AuditEvent.objects.get(action="prediction_log.retention")
    assert event.actor_name == "retention"
    assert event.details["rows_removed"] == 6
    assert event.details["partitions_dropped"] == report.partitions_dropped


def test_retention_deletes_rows_outside_partitions_in_batches(monkeypatch):
    """Rows in the default partition (PostgreSQL) or the plain table (SQLite)."""
    monkeypatch.setattr(retention, "DELETE_BATCH", 7)
    PredictionLog.objects.bulk_create(PredictionLog(**log_row(_at(20))) for _ in range(30))
    PredictionLog.objects.bulk_create(PredictionLog(**log_row(_at(0.01))) for _ in range(4))
    rollups.prediction_rollups_fold()

    report = retention.prediction_log_retention_run()

    assert report.rows_removed == 30
    assert PredictionLog.objects.count() == 4


def test_retention_never_removes_rows_the_rollups_do_not_hold_yet():
    PredictionLog.objects.bulk_create(PredictionLog(**log_row(_at(20))) for _ in range(5))

    report = retention.prediction_log_retention_run()  # no fold has run

    assert report.rows_removed == 0
    assert PredictionLog.objects.count() == 5
    assert not AuditEvent.objects.filter(action="prediction_log.retention").exists()


def test_pages_show_the_same_numbers_before_and_after_retention(settings):
    settings.PORTAL_PREDICTION_LOG_DAYS = 2
    now = timezone.now()
    for days in range(6):
        if partitions.is_partitioned():
            partitions.partition_create(day=(now - timedelta(days=days)).date())
    seed(now, 3000, spread=timedelta(days=6), rng=random.Random(8))
    rollups.prediction_rollups_fold()
    before = page_numbers()

    report = retention.prediction_log_retention_run()

    assert report.rows_removed > 0
    assert page_numbers() == before  # the hour, day and week windows are still covered


def test_beat_schedules_the_fold_and_retention():
    tasks = {entry["task"] for entry in dj_settings.CELERY_BEAT_SCHEDULE.values()}
    assert {
        "deployments_app.tasks.rollups_fold",
        "deployments_app.tasks.prediction_log_retention",
    } <= tasks


def test_prediction_log_command_folds_and_runs_retention():
    PredictionLog.objects.bulk_create(PredictionLog(**log_row(_at(20))) for _ in range(2))
    out = StringIO()
    call_command("prediction_log", "--retention", stdout=out)
    assert "folded 2 calls" in out.getvalue()
    assert "2 raw rows removed" in out.getvalue()
    assert not PredictionLog.objects.exists()
