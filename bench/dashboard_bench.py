"""Benchmark the dashboard against a large prediction log.

Creates a throwaway PostgreSQL database (``portal_bench`` by default, created and dropped
with ``createdb``/``dropdb`` as the ``portal`` role, which has CREATEDB), migrates it, writes
``--rows`` PredictionLog rows (bulk_create) spread over the last week across ``--deployments``
deployments, then times with Django's test Client, logged in as an admin, ``--requests``
requests each of:

* the dashboard JSON endpoint (``/dashboard/data``) for the last hour, day and week,
* the chart series of one deployment (``/metrics/series``, the deployment page's poll),
* the dashboard page itself (``/``),

and prints p50/p95 per endpoint (target: under 300 ms). The worker ping is cached for
15 s; it is warmed before each series so the figures measure the database work.

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
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def _seed(rows: int, deployments: int) -> str:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.utils import timezone

    from deployments_app.models import Deployment, PredictionLog, Replica
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
    admin = get_user_model().objects.create_user("bench-admin")  # force_login: no password
    admin.groups.add(Group.objects.get_or_create(name="admin")[0])
    return names[0]


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

        if postgres:
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE deployments_app_predictionlog")
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
        for label, url in endpoints:
            p50, p95, top = _time(client, url, args.requests)
            with CaptureQueriesContext(connection) as queries:
                client.get(url)
            worst = max(worst, p95)
            print(f"  {label:34} {p50:7.1f} {p95:7.1f} {top:7.1f} {len(queries):8d}")
        print(f"worst p95: {worst:.1f} ms ({'under' if worst < 300 else 'OVER'} the 300 ms target)")
    finally:
        if postgres and not args.keep:
            from django.db import connections

            connections.close_all()
            _pg("dropdb", args.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
