"""Prediction rollups: folded minutes equal their raw rows, pages read the same numbers from
rollups as from raw rows, percentiles stay within the bucket resolution, and a fold that is
interrupted or killed leaves nothing half counted."""

# ruff: noqa: S311 - seeded synthetic data, not security
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection, connections
from django.utils import timezone

from deployments_app import rollups, stats
from deployments_app.callstats import floor_to
from deployments_app.models import PredictionLog, PredictionRollup, PredictionRollupState
from deployments_app.predict import logwriter
from portal import latency

REPO = Path(__file__).resolve().parents[2]
Resolution = PredictionRollup.Resolution


def log_row(created_at: datetime, *, name: str = "house", status: int = 200, ms: float = 12.0):
    return {
        "created_at": created_at,
        "deployment_id": None,
        "deployment_name": name,
        "model_name": f"{name}-model",
        "version_number": 1 if status != 404 else None,
        "caller": "alice",
        "api_key_prefix": "",
        "status_code": status,
        "latency_ms": ms,
        "upstream_ms": None,
        "rows": 2,
        "input_bytes": 40,
        "input_sha256": "",
        "client_ip": None,
        "request_id": "",
        "replica": "",
        "error": "",
        "payload": None,
        "explained": False,
    }


def seed(now: datetime, n: int, *, spread: timedelta, rng: random.Random) -> None:
    statuses = [200] * 17 + [404, 429, 500]
    PredictionLog.objects.bulk_create(
        PredictionLog(
            **log_row(
                now - timedelta(seconds=rng.uniform(0, spread.total_seconds())),
                name=rng.choice(["house", "iris"]),
                status=rng.choice(statuses),
                ms=rng.lognormvariate(2.5, 0.8),
            )
        )
        for _ in range(n)
    )


def raw_per_minute(before: datetime) -> Counter:
    counts: Counter = Counter()
    for created_at, name in PredictionLog.objects.filter(created_at__lt=before).values_list(
        "created_at", "deployment_name"
    ):
        counts[(floor_to(created_at, 60), name)] += 1
    return counts


def rollup_per_minute(resolution: str = Resolution.MINUTE) -> Counter:
    counts: Counter = Counter()
    for start, name, n in PredictionRollup.objects.filter(resolution=resolution).values_list(
        "bucket_start", "deployment_name", "requests"
    ):
        counts[(start, name)] += n
    return counts


def page_numbers() -> dict:
    """What the dashboard, deployment page and charts show."""
    return {
        "stats": stats.deployment_call_stats(window_seconds=3600),
        "house": stats.deployment_call_stats(deployment_name="house"),
        **{
            key: stats.prediction_series(range_key=key, deployment_name=name)
            for key in ("hour", "day", "week")
            for name in (None, "house")
        },
    }


@pytest.mark.django_db
def test_fold_minute_hour_and_day_rollups_match_raw_counts():
    now = timezone.now()
    seed(now, 3000, spread=timedelta(days=3), rng=random.Random(1))

    report = rollups.prediction_rollups_fold(now=now)

    folded = rollups.folded_until()
    assert folded == floor_to(now - rollups.GRACE, 60) == report.folded_until
    raw = raw_per_minute(folded)
    assert rollup_per_minute() == raw
    assert report.calls == sum(raw.values())
    hours: Counter = Counter()
    days: Counter = Counter()
    for (minute, name), n in raw.items():
        hours[(floor_to(minute, 3600), name)] += n
        days[(floor_to(minute, 86400), name)] += n
    assert rollup_per_minute(Resolution.HOUR) == hours
    assert rollup_per_minute(Resolution.DAY) == days
    # errors by class, rows and bytes are carried too
    one = PredictionRollup.objects.filter(resolution=Resolution.DAY)
    errors = PredictionLog.objects.filter(created_at__lt=folded)
    assert sum(r.errors_4xx for r in one) == errors.filter(status_code__range=(400, 499)).count()
    assert sum(r.errors_5xx for r in one) == errors.filter(status_code__gte=500).count()
    assert sum(r.rows for r in one) == 2 * errors.count()
    assert sum(r.input_bytes for r in one) == 40 * errors.count()


@pytest.mark.django_db
def test_pages_show_the_same_numbers_from_rollups_as_from_raw_rows():
    now = timezone.now()
    seed(now, 2000, spread=timedelta(days=8), rng=random.Random(2))
    seed(now, 500, spread=timedelta(minutes=3), rng=random.Random(3))  # the unfolded tail
    before = page_numbers()

    rollups.prediction_rollups_fold()

    assert PredictionRollup.objects.exists()
    assert page_numbers() == before


@pytest.mark.django_db
def test_percentiles_from_buckets_are_within_the_bucket_resolution():
    rng = random.Random(4)
    now = timezone.now()
    latencies = [rng.lognormvariate(3.0, 0.7) for _ in range(5000)]
    PredictionLog.objects.bulk_create(
        PredictionLog(**log_row(now - timedelta(seconds=rng.uniform(120, 3500)), ms=ms))
        for ms in latencies
    )
    rollups.prediction_rollups_fold(now=now)

    house = stats.deployment_call_stats(deployment_name="house")["house"]

    latencies.sort()
    resolution = 10 ** (1 / latency.PER_DECADE)  # one bucket: about 12 %
    for q, got in ((0.5, house.p50), (0.95, house.p95), (0.99, house.p99)):
        exact = latencies[int(q * len(latencies)) - 1]
        assert exact / resolution <= got <= exact * resolution, (q, exact, got)
    assert house.requests == 5000


def test_bucket_sql_and_python_agree_on_bucket_bounds(db):
    values = [0.0, 0.05, 0.1, 0.11, 1.0, 12.3, 99.99, 100.0, 5000.0, 99999.0, 100000.0, 1e7]
    with connection.cursor() as cursor:
        for v in values:
            cursor.execute(
                f"SELECT {latency.bucket_sql(connection.vendor, 'v')} "  # noqa: S608 - constants
                "FROM (SELECT CAST(%s AS DOUBLE PRECISION) AS v) AS t",
                [v],
            )
            assert cursor.fetchone()[0] == latency.bucket_of(v), v


@pytest.mark.django_db
def test_refold_counts_a_row_that_committed_after_its_minute_was_folded():
    now = timezone.now()
    seed(now, 200, spread=timedelta(minutes=30), rng=random.Random(5))
    rollups.prediction_rollups_fold(now=now)
    folded = rollups.folded_until()
    late = folded - timedelta(seconds=90)  # a minute already folded
    PredictionLog.objects.create(**log_row(late))

    rollups.prediction_rollups_fold(now=now + timedelta(seconds=30))

    assert rollup_per_minute() == raw_per_minute(rollups.folded_until())


@pytest.mark.django_db
def test_fold_that_fails_half_way_rolls_back_and_the_rerun_is_exact(monkeypatch):
    now = timezone.now()
    seed(now, 1000, spread=timedelta(hours=20), rng=random.Random(6))
    rollups.prediction_rollups_fold(now=now - timedelta(hours=10))
    mark = rollups.folded_until()
    minutes_before = rollup_per_minute()

    def boom(*args, **kwargs):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(rollups, "_fold_level", boom)
    with pytest.raises(RuntimeError):
        rollups.prediction_rollups_fold(now=now)
    assert rollups.folded_until() == mark  # nothing of the failed chunk stayed
    assert rollup_per_minute() == minutes_before
    monkeypatch.undo()

    rollups.prediction_rollups_fold(now=now)

    assert rollup_per_minute() == raw_per_minute(rollups.folded_until())
    assert sum(rollup_per_minute(Resolution.DAY).values()) == sum(
        raw_per_minute(rollups.folded_until()).values()
    )


KILLED_FOLD = """
import os, sys, time
import django
django.setup()
from deployments_app import rollups
real = rollups._fold_minutes
def slow(start, end):
    n = real(start, end)  # minute rollups written, not committed
    print("folding", flush=True)
    time.sleep(60)
    return n
rollups._fold_minutes = slow
rollups.prediction_rollups_fold()
"""


def _database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    return f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.mark.django_db(transaction=True)
def test_fold_killed_mid_fold_leaves_nothing_and_the_rerun_is_exact():
    now = timezone.now()
    seed(now, 1500, spread=timedelta(hours=3), rng=random.Random(7))
    env = dict(os.environ, DATABASE_URL=_database_url(), DJANGO_SETTINGS_MODULE="portal.settings")
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_FOLD],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "folding"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert not PredictionRollup.objects.exists()
    assert PredictionRollupState.objects.get(pk=1).folded_until is None

    rollups.prediction_rollups_fold()

    folded = rollups.folded_until()
    assert rollup_per_minute() == raw_per_minute(folded)
    assert sum(rollup_per_minute(Resolution.HOUR).values()) == sum(raw_per_minute(folded).values())


@pytest.mark.django_db(transaction=True)
def test_rollups_equal_raw_counts_under_concurrent_writes_and_folds():
    """Calls committed through the group commit from several threads, some landing in
    minutes that are being folded at the same moment; at the end every folded minute holds
    exactly its raw rows and the pages count every call."""
    now = timezone.now()
    stop = threading.Event()
    written = Counter()

    def writer(seed_: int) -> None:
        rng = random.Random(seed_)
        try:
            for _ in range(150):
                # created_at in the last 4 minutes: partly in minutes already folded
                at = timezone.now() - timedelta(seconds=rng.uniform(0, 240))
                logwriter.write(log_row(at, ms=rng.uniform(1, 50)))
                written[seed_] += 1
        finally:
            connections.close_all()

    def folder() -> None:
        try:
            while not stop.is_set():
                rollups.prediction_rollups_fold()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    fold_thread = threading.Thread(target=folder)
    fold_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    fold_thread.join(timeout=120)
    rollups.prediction_rollups_fold()

    total = sum(written.values())
    assert PredictionLog.objects.count() == total == 600
    folded = rollups.folded_until()
    assert folded is not None and folded <= now
    assert rollup_per_minute() == raw_per_minute(folded)
    house = stats.deployment_call_stats(deployment_name="house")["house"]
    assert house.requests == total


def test_tiles_use_the_largest_rollups_that_fit():
    start = datetime(2026, 1, 1, 22, 58, tzinfo=UTC)
    end = datetime(2026, 1, 4, 1, 3, tzinfo=UTC)
    from deployments_app.callstats import tiles

    got = tiles(start, end, largest=86400)
    day = 86400
    t0 = int(datetime(2026, 1, 2, tzinfo=UTC).timestamp())
    assert got["day"] == [(t0, t0 + 2 * day)]
    assert got["hour"] == [(t0 - 3600, t0), (t0 + 2 * day, t0 + 2 * day + 3600)]
    assert got["minute"] == [
        (int(start.timestamp()), t0 - 3600),
        (t0 + 2 * day + 3600, int(end.timestamp())),
    ]
    assert set(tiles(start, end, largest=60)) == {"minute"}


def test_tiles_at_the_watermark_end_with_the_rollup_that_holds_it():
    from deployments_app.callstats import tiles

    start = datetime(2026, 1, 1, 22, 58, tzinfo=UTC)
    mark = datetime(2026, 1, 2, 1, 3, tzinfo=UTC)
    got = tiles(start, mark, largest=3600, at_watermark=True)
    t0 = int(datetime(2026, 1, 2, tzinfo=UTC).timestamp())
    assert got["minute"] == [(int(start.timestamp()), t0 - 3600)]
    assert got["hour"] == [(t0 - 3600, t0 + 2 * 3600)]  # the last hour holds 01:00-01:03
    assert tiles(start, mark, largest=86400, at_watermark=True)["day"] == [(t0, t0 + 86400)]


@pytest.mark.django_db
def test_window_totals_per_version_equal_raw_counts_after_a_fold():
    """What the rollout guardrails need: per-version figures over a window that starts
    mid-minute, from rollups plus raw rows, equal to the raw rows'."""
    from deployments_app.callstats import raw_totals, window_totals

    now = timezone.now()
    rows = [
        log_row(now - timedelta(seconds=s), status=404 if s % 7 == 0 else 200)
        for s in range(5, 4000, 3)
    ]
    PredictionLog.objects.bulk_create(PredictionLog(**r) for r in rows)
    rollups.prediction_rollups_fold(now=now)
    since = now - timedelta(seconds=3000.5)

    got = window_totals(
        since=since,
        now=now,
        deployment_name="house",
        raw_group_sql="version_number",
        rollup_key=lambda _start, _name, version: version,
    )

    raw = raw_totals(ranges=[(since, None)], group_sql="version_number", deployment_name="house")
    assert {k: (t.requests, t.errors_4xx, t.histogram) for k, t in got.items()} == {
        k: (t.requests, t.errors_4xx, t.histogram) for k, t in raw.items()
    }
    assert set(got) == {1, None}
