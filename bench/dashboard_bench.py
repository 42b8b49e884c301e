"""Benchmark the dashboard against a large prediction log.

Creates a throwaway PostgreSQL database (``portal_bench`` by default, created and dropped
with ``createdb``/``dropdb`` as the ``portal`` role, which has CREATEDB), migrates it, writes
``--rows`` PredictionLog rows spread over the last week across ``--deployments``
deployments (generated inside PostgreSQL with generate_series, so 10M rows take minutes;
bulk_create on SQLite), folds them into rollups as the beat task would (printing how long
the first fold of the whole history took), then times with Django's test Client, logged in
as an admin, ``--requests`` requests each of:

* the dashboard JSON endpoint (``/dashboard/data``) for the last hour, day and week,
* the chart series of one deployment (``/metrics/series``, the deployment page's poll),
* the dashboard page itself (``/``),

and prints p50/p95 per endpoint (target: under 300 ms) and a Markdown table for the README.
The worker ping is cached for 15 s; it is warmed before each series so the figures measure
the database work.

    .venv/bin/python bench/dashboard_bench.py [--rows 100000] [--requests 20] [--keep]

``--url postgres://...`` uses another database (dropped at the end unless ``--keep``);
``--url sqlite:///path`` measures the SQLite fallback.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgres://portal:portal@127.0.0.1:5432/portal_bench"


def _pg(command: str, url: str) -> None:
    parts = urlparse(url)
    env = dict(os.environ, PGPASSWORD=parts.password or "")
    args = [command, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    args += ["-U", parts.username or "portal"]
    if command == "dropdb":
        args.append("--if-exists")
    subprocess.run([*args, parts.path.lstrip("/")], env=env, check=True)


def _setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.conf import settings

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]  # Django's test Client
    # Pages render without a collectstatic manifest (a fresh checkout has none).
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def _seed(rows: int, deployments: int) -> str:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.utils import timezone

    from deployments_app.models import Deployment, Replica
    from models_app.models import ModelVersion, RegisteredModel

    names = []
    for i in range(deployments):
        model = RegisteredModel.objects.create(name=f"bench-model-{i}")
        version = ModelVersion.objects.create(
            model=model,
            number=1,
            status="ready",
            artifact_sha256=f"{i:064x}",
            artifact_size=1,
        )
        deployment = Deployment.objects.create(
            name=f"bench-{i}", model=model, version=version, runtime="process", state="running"
        )
        Replica.objects.create(
            deployment=deployment,
            name=f"portal-bench-{i}-0",
            index=0,
            version_number=1,
            healthy=True,
        )
        names.append(deployment.name)
    if connection.vendor == "postgresql":
        try:
            from deployments_app import partitions
        except ImportError:  # measuring a portal from before partitions and rollups
            partitions = None
        if partitions is not None and partitions.is_partitioned():
            # Daily partitions for the week the rows span (beat makes them ahead).
            today = timezone.now().date()
            for back in range(8):
                partitions.partition_create(day=today - timedelta(days=back))
        _seed_sql(rows, names)
    else:
        _seed_orm(rows, names)
    admin = get_user_model().objects.create_user("bench-admin")  # force_login: no password
    admin.groups.add(Group.objects.get_or_create(name="admin")[0])
    return names[0]


def _seed_orm(rows: int, names: list[str]) -> None:
    from django.utils import timezone

    from deployments_app.models import PredictionLog

    rng = random.Random(42)  # noqa: S311 - synthetic data, not security
    now = timezone.now()
    week = 7 * 86400
    batch: list[PredictionLog] = []
    for n in range(rows):
        # A quarter of the traffic in the last hour, so every range has real work to do.
        age = rng.uniform(0, 3600) if n % 4 == 0 else rng.uniform(0, week)
        batch.append(
            PredictionLog(
                created_at=now - timedelta(seconds=age),
                deployment_name=names[n % len(names)],
                model_name=f"bench-model-{n % len(names)}",
                version_number=1,
                caller="bench",
                status_code=500 if rng.random() < 0.02 else 200,
                latency_ms=rng.lognormvariate(2.5, 0.6),
                upstream_ms=rng.lognormvariate(2.2, 0.6),
                rows=1,
            )
        )
        if len(batch) == 5000:
            PredictionLog.objects.bulk_create(batch)
            batch.clear()
    PredictionLog.objects.bulk_create(batch)


SEED_CHUNK = 1_000_000


def _seed_sql(rows: int, names: list[str]) -> None:
    """Nearly the distribution of `_seed_orm`, generated inside PostgreSQL (10M rows in
    minutes, not hours): a quarter of the calls evenly over the last hour, the rest evenly
    over the week before it, 2 % errors, log-normal latencies (Box-Muller from random()).
    Rows are written in time order, as the log writer appends them."""
    from django.db import connection
    from django.utils import timezone

    table = "deployments_app_predictionlog"
    deployments = len(names)
    week, hour = 604800.0, 3600.0
    spread, recent = rows - rows // 4, rows // 4
    sql = f"""
        INSERT INTO {table} (created_at, deployment_name, model_name, version_number, caller,
            api_key_prefix, status_code, latency_ms, upstream_ms, rows, input_bytes,
            input_sha256, request_id, replica, error)
        SELECT t0 - make_interval(secs => age), 'bench-' || (g %% {deployments}),
            'bench-model-' || (g %% {deployments}), 1, 'bench',
            '', CASE WHEN random() < 0.02 THEN 500 ELSE 200 END,
            exp(2.5 + 0.6 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())),
            exp(2.2 + 0.6 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())),
            1, 0, '', '', '', ''
        FROM (SELECT g, %s::timestamptz AS t0,
                     %s - (g - %s) * %s AS age FROM generate_series(%s, %s) AS g) AS s
        ORDER BY age DESC
    """  # noqa: S608 - constants only
    now = timezone.now()
    # (first row, count, seconds covered, seconds before now where the slice ends)
    parts = [(0, spread, week - hour, hour), (spread, recent, hour, 0.0)]
    with connection.cursor() as cursor:
        for first, count, seconds, end_age in parts:
            step = seconds / max(count, 1)
            for start in range(first, first + count, SEED_CHUNK):
                stop = min(first + count, start + SEED_CHUNK) - 1
                # age of row g: from end_age + seconds (oldest) down to end_age
                cursor.execute(sql, [now, end_age + seconds, first, step, start, stop])


def _time(client, url: str, requests: int) -> tuple[float, float, float]:
    from portal import selectors

    selectors.worker_health()  # warm the cached worker ping
    client.get(url)  # warm template and query plans
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    samples.sort()
    p95 = statistics.quantiles(samples, n=20, method="inclusive")[18]
    return statistics.median(samples), p95, samples[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--deployments", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    postgres = args.url.startswith("postgres")
    if postgres:
        _pg("dropdb", args.url)
        _pg("createdb", args.url)
    try:
        _setup_django(args.url)
        started = time.perf_counter()
        first = _seed(args.rows, args.deployments)
        print(f"seeded {args.rows} prediction rows in {time.perf_counter() - started:.1f} s")

        from django.contrib.auth import get_user_model
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        from portal import selectors

        try:
            from deployments_app import rollups
        except ImportError:  # measuring a portal from before rollups: raw rows only
            rollups = None
        if rollups is not None:
            started = time.perf_counter()
            report = rollups.prediction_rollups_fold()
            print(
                f"folded {report.calls} calls into rollups ({report.chunks} chunks) "
                f"in {time.perf_counter() - started:.1f} s"
            )
        if postgres:
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE deployments_app_predictionlog")
                if rollups is not None:
                    cursor.execute("ANALYZE deployments_app_predictionrollup")
        started = time.perf_counter()
        selectors.worker_health(refresh=True)
        print(f"worker ping (uncached, no worker running): {time.perf_counter() - started:.2f} s")

        client = Client()
        client.force_login(get_user_model().objects.get(username="bench-admin"))
        endpoints = [
            ("dashboard JSON, last hour", "/dashboard/data?range=hour"),
            ("dashboard JSON, last day", "/dashboard/data?range=day"),
            ("dashboard JSON, last week", "/dashboard/data?range=week"),
            ("one deployment's series, week", f"/metrics/series?range=week&deployment={first}"),
            ("dashboard page", "/"),
            ("deployment page", f"/deployments/{first}/"),
        ]
        print(f"{connection.vendor}, {args.requests} requests each (ms):")
        print(f"  {'endpoint':34} {'p50':>7} {'p95':>7} {'max':>7} {'queries':>8}")
        worst = 0.0
        table = []
        for label, url in endpoints:
            p50, p95, top = _time(client, url, args.requests)
            with CaptureQueriesContext(connection) as queries:
                client.get(url)
            worst = max(worst, p95)
            table.append(f"| {label} | {p50:.0f} | {p95:.0f} |")
            print(f"  {label:34} {p50:7.1f} {p95:7.1f} {top:7.1f} {len(queries):8d}")
        print(f"worst p95: {worst:.1f} ms ({'under' if worst < 300 else 'OVER'} the 300 ms target)")
        print(
            f"\nfor the README ({args.rows:,} rows, ms):\n| endpoint | p50 | p95 |\n|---|---|---|"
        )
        print("\n".join(table))
    finally:
        if postgres and not args.keep:
            from django.db import connections

            connections.close_all()
            _pg("dropdb", args.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
