"""Faults in the services around a deployment: Redis restarted while a build runs."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings as dj_settings

from deployments_app.models import Deployment
from tests.conftest import FIXTURE_DIR, upload_and_wait_ready, wait_for
from tests.deployments_app.test_lifecycle import _docker_or_skip, _predict_each_replica
from tests.deployments_app.test_reliability import _launch, _reconcile_until

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.security]
ROOT = Path(__file__).resolve().parents[2]


def _restart_redis() -> float:
    """Stop the machine's Redis (no save: queued messages are lost) and start it again."""
    started = time.monotonic()
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"],
        capture_output=True,
        timeout=30,
    )
    wait_for(
        lambda: subprocess.run(["redis-cli", "ping"], capture_output=True).returncode != 0,
        timeout=30,
        what="redis to stop",
    )
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "services.sh"), "start"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return time.monotonic() - started


def test_redis_restarted_during_a_deployment_still_ends_running(
    transactional_db, worker_storage, api_client, manifest, own_containers, crash_workers
):
    if dj_settings.CELERY_BROKER_URL != "redis://127.0.0.1:6379/0" or os.geteuid() != 0:
        pytest.skip("restarts the machine's Redis: runs under `make test` (root, local Redis)")
    _docker_or_skip()
    entry = manifest["house_price_linreg.pkl"]
    name = f"redis-fault-{uuid.uuid4().hex[:6]}"
    own_containers.append(name)
    client = api_client("deployer")
    crash_workers()  # this test's own worker and queue (the fixture routes tasks there)
    upload_and_wait_ready(
        client, name, FIXTURE_DIR / "house_price_linreg.pkl", entry["input_example"]
    )
    _launch(client, name)
    wait_for(
        lambda: Deployment.objects.get(name=name).state in ("building", "starting", "running"),
        timeout=120,
        what="the deployment to start building",
    )
    downtime = _restart_redis()
    assert downtime < 60
    deployment = _reconcile_until(
        lambda: (d := Deployment.objects.get(name=name)).state in ("running", "failed") and d,
        timeout=600,
        what="the deployment to settle after the Redis restart",
    )
    assert deployment.state == "running", deployment.failure_reason
    assert _predict_each_replica(name, entry["input_example"], entry["expected_predict"]) == 1
