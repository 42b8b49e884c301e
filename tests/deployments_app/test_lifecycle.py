"""The deployment lifecycle through the API, a real worker and a real runtime.

Docker: build an image from the local base image, run hardened containers, call them,
scale, update, roll back, survive a killed replica, stop, start, delete. The same on the
`process` runtime. Everything created is labelled and removed at the end.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http import HTTPStatus

import joblib
import numpy as np
import pytest

from deployments_app import services
from deployments_app.models import Build, Deployment, Replica
from deployments_app.predict import keys
from deployments_app.runtimes import get_runtime, replica_token
from deployments_app.runtimes.base import replica_request
from portal.audit import Actor
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR, upload_and_wait_ready, wait_for
from tests.services import require

pytestmark = [pytest.mark.slow]


def _docker_or_skip():
    try:
        import docker

        # Cleanup removes containers and images: slow on a busy engine, not a failure.
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception:  # noqa: BLE001
        require(False, "a Docker engine")
    return client


@pytest.fixture
def cleanup_docker():
    names: list[str] = []
    yield names
    client = _docker_or_skip()
    for name in names:
        for c in client.containers.list(all=True, filters={"label": f"portal.deployment={name}"}):
            c.remove(force=True)
    for name in names:
        for image in client.images.list(name=f"portal-model/{name}"):
            client.images.remove(image.id, force=True)


class _ClientLoop(threading.Thread):
    """Calls the portal's proxy in a loop (its own DB connection) and records every answer."""

    def __init__(self, name: str, key: str, rows) -> None:
        super().__init__(daemon=True)
        self.name, self.key, self.rows = name, key, rows
        self.calls, self.failures, self.versions = 0, [], set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        from django.db import connection
        from django.test import Client

        client = Client()
        try:
            while not self._stop_event.is_set():
                response = client.post(
                    f"/api/v1/deployments/{self.name}/predict",
                    data=json.dumps({"instances": self.rows}),
                    content_type="application/json",
                    HTTP_AUTHORIZATION=f"Bearer {self.key}",
                )
                self.calls += 1
                if response.status_code != 200:
                    self.failures.append((response.status_code, response.content[:200]))
                else:
                    self.versions.add(response.json()["version"])
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


def _wait_state(name: str, states: tuple[str, ...], timeout: float = 900) -> Deployment:
    def reached():
        d = Deployment.objects.filter(name=name).first()
        return d if d and d.state in states else None

    try:
        return wait_for(reached, timeout=timeout, interval=1, what=f"{name} to reach {states}")
    except AssertionError:
        d = Deployment.objects.filter(name=name).first()
        raise AssertionError(
            f"{name} is {d and d.state}: {d and d.failure_reason}; events: "
            f"{[e.message for e in d.events.all()[:10]] if d else None}"
        ) from None


def _predict_each_replica(name: str, rows, expected) -> int:
    replicas = list(Replica.objects.filter(deployment__name=name, healthy=True))
    assert replicas
    for replica in replicas:
        # Straight to the replica's socket, with the token the proxy would send.
        status, body = replica_request(
            replica.endpoint,
            "POST",
            "/predict",
            body=json.dumps({"instances": rows}).encode(),
            token=replica_token(name),
        )
        assert status == 200, body
        got = json.loads(body)["predictions"]
        assert np.allclose(got, expected) if isinstance(expected[0], float) else got == expected
    return len(replicas)


@pytest.mark.docker
@pytest.mark.parametrize(
    "filename",
    [
        "house_price_linreg.pkl",
        "iris_rf_sklearn13.joblib",
        "breast_cancer_svc.joblib",
        "diabetes_gbr.skops",
    ],
)
def test_each_fixture_deploys_on_docker_and_answers_like_its_manifest(
    transactional_db, worker_storage, api_client, manifest, cleanup_docker, filename
):
    _docker_or_skip()
    entry = manifest[filename]
    name = f"{entry['name']}-{uuid.uuid4().hex[:6]}"
    cleanup_docker.append(name)
    client = api_client("deployer")
    upload_and_wait_ready(client, name, FIXTURE_DIR / filename, entry["input_example"])
    response = client.post(
        "/api/v1/deployments",
        {"name": name, "model": name, "version": 1, "runtime": "docker"},
        format="json",
    )
    assert response.status_code == HTTPStatus.ACCEPTED, response.content
    _wait_state(name, ("running", "failed"))
    deployment = _wait_state(name, ("running",), timeout=5)
    _predict_each_replica(name, entry["input_example"], entry["expected_predict"])
    build = Build.objects.get(deployment=deployment)
    assert build.status == "succeeded" and build.image_size > 0 and build.log
    client.delete(f"/api/v1/deployments/{name}")


@pytest.mark.parametrize("runtime", ["docker", "process"])
def test_full_lifecycle(
    transactional_db,
    worker_storage,
    api_client,
    manifest,
    cleanup_docker,
    tmp_path,
    settings,
    runtime,
):
    if runtime == "docker":
        _docker_or_skip()
    settings.PORTAL_ALLOWED_RUNTIMES = ["docker", "process"]  # process although Docker answers
    entry = manifest["spam_pipeline.joblib"]
    name = f"spam-{runtime[:4]}-{uuid.uuid4().hex[:6]}"
    cleanup_docker.append(name)
    client = api_client("deployer")
    v1 = upload_and_wait_ready(
        client, name, FIXTURE_DIR / "spam_pipeline.joblib", entry["input_example"]
    )
    # v2: the same estimator saved differently (compressed), so predictions stay comparable.
    v2_path = tmp_path / "spam-v2.joblib"
    joblib.dump(joblib.load(FIXTURE_DIR / "spam_pipeline.joblib"), v2_path, compress=3)
    v2 = upload_and_wait_ready(client, name, v2_path, entry["input_example"])
    assert (v1.number, v2.number) == (1, 2)

    # launch
    response = client.post(
        "/api/v1/deployments",
        {"name": name, "model": name, "version": 1, "runtime": runtime},
        format="json",
    )
    assert response.status_code == HTTPStatus.ACCEPTED, response.content
    _wait_state(name, ("running", "failed"))
    deployment = _wait_state(name, ("running",), timeout=5)
    assert _predict_each_replica(name, entry["input_example"], entry["expected_predict"]) == 1
    runtime_backend = get_runtime(runtime)

    # scale to 2
    assert (
        client.post(
            f"/api/v1/deployments/{name}/actions", {"action": "scale", "replicas": 2}, format="json"
        ).status_code
        == HTTPStatus.ACCEPTED
    )
    wait_for(
        lambda: Replica.objects.filter(deployment=deployment, healthy=True).count() == 2,
        timeout=300,
        what="2 healthy replicas",
    )
    assert _predict_each_replica(name, entry["input_example"], entry["expected_predict"]) == 2

    # update to v2 while a client keeps calling the proxy: no call may fail
    _, raw_key = keys.api_key_create(
        user=client.user, actor=Actor.system(), name="loop", deployment_names=[name]
    )
    loop = _ClientLoop(name, raw_key, entry["input_example"])
    loop.start()
    try:
        client.post(
            f"/api/v1/deployments/{name}/actions",
            {"action": "update", "version": 2},
            format="json",
        )
        wait_for(
            lambda: Deployment.objects.get(pk=deployment.pk).version_id == v2.pk,
            timeout=600,
            what="switch to v2",
        )
        wait_for(
            lambda: {s.version for s in runtime_backend.list_replicas(name)} == {2},
            timeout=120,
            what="old replicas removed",
        )
        time.sleep(1)
    finally:
        loop.stop()
    assert loop.versions == {1, 2}, loop.versions  # it really ran across the switch
    assert loop.failures == [], loop.failures[:5]
    assert loop.calls > 10
    assert _predict_each_replica(name, entry["input_example"], entry["expected_predict"]) == 2

    # roll back to v1 without rebuilding (its build is kept)
    builds_before = Build.objects.filter(deployment=deployment).count()
    client.post(f"/api/v1/deployments/{name}/actions", {"action": "rollback"}, format="json")
    wait_for(
        lambda: Deployment.objects.get(pk=deployment.pk).version_id == v1.pk,
        timeout=300,
        what="rollback to v1",
    )
    assert Build.objects.filter(deployment=deployment).count() == builds_before

    # a replica dies; the reconciler brings the count back
    wait_for(
        lambda: {s.version for s in runtime_backend.list_replicas(name)} == {1},
        timeout=120,
        what="v2 replicas removed",
    )
    victim = runtime_backend.list_replicas(name)[0]
    runtime_backend.stop_replica(victim.name)  # docker kill / SIGTERM to the process group
    services.reconcile()
    replicas = [s for s in runtime_backend.list_replicas(name) if s.state == "running"]
    assert len(replicas) == 2
    assert _predict_each_replica(name, entry["input_example"], entry["expected_predict"]) == 2

    # stop, start, delete
    client.post(f"/api/v1/deployments/{name}/actions", {"action": "stop"}, format="json")
    _wait_state(name, ("stopped",), timeout=120)
    assert runtime_backend.list_replicas(name) == []
    client.post(f"/api/v1/deployments/{name}/actions", {"action": "start"}, format="json")
    _wait_state(name, ("running", "failed"), timeout=300)
    _wait_state(name, ("running",), timeout=5)
    assert client.delete(f"/api/v1/deployments/{name}").status_code == HTTPStatus.NO_CONTENT
    assert runtime_backend.list_replicas(name) == []
    actions = set(AuditEvent.objects.filter(target_name=name).values_list("action", flat=True))
    assert {
        "deployment.launched",
        "deployment.running",
        "deployment.scaled",
        "deployment.updated",
        "deployment.rolled_back",
        "deployment.stopped",
        "deployment.deleted",
    } <= actions


def test_viewer_cannot_deploy(api_client):
    response = api_client("viewer").post(
        "/api/v1/deployments", {"name": "x", "model": "m", "version": 1}, format="json"
    )
    assert response.status_code == HTTPStatus.FORBIDDEN
