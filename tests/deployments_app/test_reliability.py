"""Failure and recovery with real services: killed replicas, killed workers, stuck work.

A replica killed with `docker kill` is replaced by the reconciler; a Celery worker killed
(SIGKILL to its process group) in the middle of an image build or of a validation leaves
work that the reconciler re-queues once its heartbeat goes quiet, and a new worker finishes
it; work that never progresses ends failed; the reconciler is idempotent and removes
labelled containers that no deployment wants.

With the Redis broker a killed worker's unacknowledged message only comes back after the
visibility timeout (an hour), so these tests lean on the reconciler, run in the test process
with a short `PORTAL_STALE_SECONDS`, exactly as Celery beat would run it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path

import pytest
from django.conf import settings as dj_settings
from django.utils import timezone

from deployments_app import services
from deployments_app.models import Build, Deployment, DeploymentEvent, Replica
from deployments_app.runtimes import get_runtime
from deployments_app.runtimes.base import BuildResult, BuildSpec, ReplicaLimits, replica_name
from models_app.models import ModelVersion, RegisteredModel
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR, WorkerHandle, upload_and_wait_ready, wait_for
from tests.deployments_app.test_lifecycle import _docker_or_skip, _predict_each_replica, _wait_state

pytestmark = [pytest.mark.slow]

# Short enough for a test, long enough that a live worker's heartbeat never looks dead.
STALE_SECONDS = 8


# --------------------------------------------------------------------------- helpers


def _forget_queue(queue: str) -> None:
    """Drop a private queue from Redis, and the messages a killed worker never acknowledged.

    Left alone, kombu would restore those messages into the queue an hour later.
    """
    url = dj_settings.CELERY_BROKER_URL
    if not url.startswith("redis://"):
        return
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        for tag, payload in client.hgetall("unacked").items():
            with contextlib.suppress(ValueError, TypeError, IndexError):
                _message, exchange, routing_key = json.loads(payload)
                if queue in (exchange, routing_key):
                    client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
    finally:
        client.close()


class _OwnReplicasOnly:
    """A runtime that, asked for every replica, lists only those of `names`."""

    def __init__(self, runtime, names: list[str]) -> None:
        self._runtime, self._names = runtime, names

    def __getattr__(self, attr: str):
        return getattr(self._runtime, attr)

    def list_replicas(self, deployment: str | None = None):
        found = self._runtime.list_replicas(deployment)
        if deployment is not None:
            return found
        return [s for s in found if s.deployment in self._names]


@pytest.fixture
def own_containers(cleanup_docker, monkeypatch) -> list[str]:
    """Names of this test's deployments: removed afterwards, and the only replicas the
    reconciler may judge orphans.

    The Docker engine may be shared with other portals or test sessions, whose replicas
    this test database knows nothing about: the reconciler run here must leave them alone.
    """
    real = services.get_runtime
    monkeypatch.setattr(
        services, "get_runtime", lambda name=None: _OwnReplicasOnly(real(name), cleanup_docker)
    )
    return cleanup_docker


@pytest.fixture
def crash_workers(
    worker_storage, celery_worker_process, tmp_path, settings
) -> Iterator[Callable[..., WorkerHandle]]:
    """Start workers of this test alone, which it may kill as a crash would.

    They listen on a private queue (the session's shared worker keeps serving the other
    tests), keep their temporary files under `tmp_path` (a SIGKILLed build never removes
    its context directory), and use the test's `PORTAL_STALE_SECONDS`, so their heartbeats
    beat as often as the reconciler in this process expects.
    """
    from portal.celery import app

    settings.PORTAL_STALE_SECONDS = STALE_SECONDS
    queue = f"portal-crash-{uuid.uuid4().hex[:8]}"
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    env = {
        **celery_worker_process.env,
        "TMPDIR": str(worker_tmp),
        "PORTAL_STALE_SECONDS": str(STALE_SECONDS),
    }
    old_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    started: list[WorkerHandle] = []

    def start(**extra_env: str) -> WorkerHandle:
        handle = WorkerHandle(queue, celery_worker_process.storage, {**env, **extra_env})
        started.append(handle.start())
        return handle

    try:
        yield start
    finally:
        app.conf.task_default_queue = old_queue
        for handle in started:
            handle.kill(signal.SIGTERM)  # a no-op for the ones the test killed already
        _forget_queue(queue)


def _reconcile_until(predicate: Callable[[], object], *, timeout: float, what: str) -> object:
    """Run the reconciler every second (as beat would) until predicate() holds."""

    def step():
        services.reconcile()
        return predicate()

    return wait_for(step, timeout=timeout, interval=1, what=what)


def _launch(client, name: str, version: int = 1, replicas: int = 1) -> None:
    response = client.post(
        "/api/v1/deployments",
        {
            "name": name,
            "model": name,
            "version": version,
            "runtime": "docker",
            "replicas": replicas,
        },
        format="json",
    )
    assert response.status_code == HTTPStatus.ACCEPTED, response.content


def _snapshot(name: str) -> dict[str, object]:
    """What a reconcile pass could change about one deployment."""
    deployment = Deployment.objects.get(name=name)
    runtime = get_runtime("docker")
    import docker

    client = docker.from_env(timeout=10)
    try:
        containers = {
            c.name: c.id
            for c in client.containers.list(
                all=True, filters={"label": f"portal.deployment={name}"}
            )
        }
    finally:
        client.close()
    return {
        "state": deployment.state,
        "work_attempts": deployment.work_attempts,
        "containers": containers,
        "observed": [(s.name, s.state, s.endpoint) for s in runtime.list_replicas(name)],
        "replicas": sorted(
            Replica.objects.filter(deployment=deployment).values_list("name", "endpoint", "healthy")
        ),
        "events": DeploymentEvent.objects.filter(deployment=deployment).count(),
        "audit": AuditEvent.objects.filter(target_name=name).count(),
        "builds": Build.objects.filter(deployment=deployment).count(),
    }


# --------------------------------------------------------------------------- replicas


def _running_house(prefix, api_client, manifest, own_containers, replicas=1):
    """Upload the house model and deploy it (as a deployer) until it runs."""
    entry = manifest["house_price_linreg.pkl"]
    name = f"house-{prefix}-{uuid.uuid4().hex[:6]}"
    own_containers.append(name)
    client = api_client("deployer")
    upload_and_wait_ready(
        client, name, FIXTURE_DIR / "house_price_linreg.pkl", entry["input_example"]
    )
    _launch(client, name, replicas=replicas)
    _wait_state(name, ("running", "failed"))
    return entry, name, client, _wait_state(name, ("running",), timeout=5)


def _assert_replaced(docker_client, summary, victim, entry, deployment, condition: str):
    """The reconcile replaced replica 0 (`victim`, found `condition`): a new container
    serves right answers, the deployment runs, an event and one audit row say so."""
    name = deployment.name
    assert summary["converged"] >= 1
    replacement = docker_client.containers.get(replica_name(name, 0, dj_settings.PORTAL_INSTANCE))
    assert replacement.id != victim.id and replacement.status == "running"
    assert _predict_each_replica(name, entry["input_example"], entry["expected_predict"]) == 1
    deployment.refresh_from_db()
    assert deployment.state == "running"
    assert DeploymentEvent.objects.filter(
        deployment=deployment, message__contains=f"replica {victim.name} was {condition}; replacing"
    ).exists()
    audit = AuditEvent.objects.get(action="deployment.replicas_replaced", target_name=name)
    assert audit.details == {"replaced": 1} and audit.actor_name == "reconciler"


@pytest.mark.security
@pytest.mark.docker
def test_replica_killed_with_docker_kill_is_replaced_by_the_reconciler(
    transactional_db, worker_storage, api_client, manifest, own_containers
):
    docker_client = _docker_or_skip()
    entry, name, client, deployment = _running_house("kill", api_client, manifest, own_containers)
    _predict_each_replica(name, entry["input_example"], entry["expected_predict"])

    victim = docker_client.containers.get(replica_name(name, 0, dj_settings.PORTAL_INSTANCE))
    victim.kill()  # SIGKILL, as `docker kill` does
    wait_for(
        lambda: (victim.reload() or victim.status) == "exited", timeout=30, what="kill to land"
    )

    summary = services.reconcile()

    _assert_replaced(docker_client, summary, victim, entry, deployment, "exited")
    client.delete(f"/api/v1/deployments/{name}")


@pytest.mark.security
@pytest.mark.docker
def test_hanging_replica_is_replaced_by_the_reconciler_before_docker_notices(
    transactional_db, worker_storage, api_client, manifest, own_containers, settings
):
    """The model server is frozen (SIGSTOP from the host): the container still runs and
    Docker still reports it healthy (it needs three failed checks, 5 s apart), but /health
    answers nothing. The reconciler's own liveness probe finds it, replaces it, and the
    deployment answers again, with an event and an audit row saying so."""
    import os

    docker_client = _docker_or_skip()
    settings.PORTAL_LIVENESS_TIMEOUT = 1.0
    settings.PORTAL_LIVENESS_TRIES = 2
    entry, name, client, deployment = _running_house("hang", api_client, manifest, own_containers)

    victim = docker_client.containers.get(replica_name(name, 0, dj_settings.PORTAL_INSTANCE))

    def docker_health() -> str:
        victim.reload()
        return (victim.attrs["State"].get("Health") or {}).get("Status", "")

    wait_for(lambda: docker_health() == "healthy", timeout=60, what="Docker's first check")
    host_pid = victim.attrs["State"]["Pid"]
    os.kill(host_pid, signal.SIGSTOP)
    try:
        assert docker_health() == "healthy"  # Docker has not noticed yet
        summary = services.reconcile()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(host_pid, signal.SIGCONT)

    condition = "hanging: /health did not answer"
    _assert_replaced(docker_client, summary, victim, entry, deployment, condition)
    client.delete(f"/api/v1/deployments/{name}")


@pytest.mark.docker
def test_replica_whose_image_was_pruned_is_rebuilt_and_replaced(
    transactional_db, worker_storage, api_client, manifest, own_containers
):
    """An operator ran `docker image rm -f` (or a prune) on a running deployment's image,
    then its replica died: the reconciler builds the image again (from the layer cache)
    instead of failing to start a container from an image that is gone."""
    docker_client = _docker_or_skip()
    entry, name, client, deployment = _running_house("pruned", api_client, manifest, own_containers)
    build = Build.objects.filter(deployment=deployment, status="succeeded").latest("id")
    victim = docker_client.containers.get(replica_name(name, 0, dj_settings.PORTAL_INSTANCE))
    docker_client.images.remove(build.image_ref, force=True)  # untagged; the container runs on
    victim.kill()
    wait_for(
        lambda: (victim.reload() or victim.status) == "exited", timeout=30, what="kill to land"
    )

    services.reconcile()

    replacement = docker_client.containers.get(replica_name(name, 0, dj_settings.PORTAL_INSTANCE))
    assert replacement.id != victim.id and replacement.status == "running"
    assert _predict_each_replica(name, entry["input_example"], entry["expected_predict"]) == 1
    assert DeploymentEvent.objects.filter(
        deployment=deployment, message=f"image {build.image_ref} is gone; building it again"
    ).exists()
    assert docker_client.images.get(build.image_ref)  # rebuilt under the same tag
    deployment.refresh_from_db()
    assert deployment.state == "running"
    client.delete(f"/api/v1/deployments/{name}")


@pytest.mark.docker
def test_two_reconciles_in_a_row_change_nothing_on_a_healthy_deployment(
    transactional_db, worker_storage, api_client, manifest, own_containers
):
    _docker_or_skip()
    entry, name, client, _ = _running_house(
        "idem", api_client, manifest, own_containers, replicas=2
    )
    before = _snapshot(name)
    assert len(before["containers"]) == 2

    first = services.reconcile()
    after_first = _snapshot(name)
    second = services.reconcile()
    after_second = _snapshot(name)

    assert before == after_first == after_second
    for summary in (first, second):
        assert summary["requeued"] == summary["failed"] == summary["validations_requeued"] == 0
    assert _predict_each_replica(name, entry["input_example"], entry["expected_predict"]) == 2
    client.delete(f"/api/v1/deployments/{name}")


@pytest.mark.security
@pytest.mark.docker
def test_labelled_container_no_deployment_wants_is_removed(
    transactional_db, own_containers, settings
):
    """A replica of a deployment whose row is gone (deleted behind the portal's back)."""
    docker_client = _docker_or_skip()
    settings.PORTAL_RUNTIME = "docker"
    name = f"ghost-{uuid.uuid4().hex[:6]}"
    own_containers.append(name)
    runtime = get_runtime("docker")
    base = docker_client.images.get(settings.PORTAL_BASE_IMAGE)
    # Any image carries the labels; the base image is there already and needs no build.
    status = runtime.start_replica(
        deployment=name,
        index=0,
        build=BuildResult(
            ref=settings.PORTAL_BASE_IMAGE,
            digest=base.id,
            size_bytes=0,
            log="",
            duration_s=0.0,
            cached=True,
        ),
        spec=BuildSpec(
            deployment=name,
            model=name,
            version=1,
            artifact_path=Path("/nonexistent"),
            artifact_sha256="0" * 64,
            fmt="joblib",
            requirements={},
            base_image=settings.PORTAL_BASE_IMAGE,
            wheelhouse=Path(settings.PORTAL_WHEELHOUSE),
            server_dir=services.SERVER_DIR,
        ),
        limits=ReplicaLimits(memory_mb=64, cpus=0.1, pids=16),
        publish_host="127.0.0.1",
    )
    assert [s.name for s in runtime.list_replicas(name)] == [status.name]
    assert not Deployment.objects.filter(name=name).exists()

    summary = services.reconcile()

    assert summary["orphans_removed"] >= 1
    assert runtime.list_replicas(name) == []
    assert docker_client.containers.list(all=True, filters={"name": status.name}) == []


# --------------------------------------------------------------------------- workers


@pytest.mark.security
@pytest.mark.docker
def test_worker_killed_during_a_build_is_recovered_by_the_reconciler_and_a_new_worker(
    transactional_db, crash_workers, api_client, manifest, own_containers
):
    _docker_or_skip()
    entry = manifest["spam_pipeline.joblib"]
    # A fresh model name: the image's last layers (model, labels) must be built.
    name = f"spam-crash-{uuid.uuid4().hex[:6]}"
    own_containers.append(name)
    client = api_client("deployer")
    first = crash_workers()
    upload_and_wait_ready(
        client, name, FIXTURE_DIR / "spam_pipeline.joblib", entry["input_example"]
    )
    _launch(client, name)

    def building_with_log():
        build = Build.objects.filter(deployment__name=name).first()
        state = Deployment.objects.get(name=name).state
        assert state in ("pending", "building"), f"the build ended before the kill: {state}"
        return state == "building" and build is not None and build.log

    wait_for(building_with_log, timeout=600, interval=0.05, what="a build with log lines")
    first.kill()  # SIGKILL to the worker and its pool, pip and docker client included
    deployment = Deployment.objects.get(name=name)
    assert deployment.state == "building" and deployment.work_attempts == 1
    crash_workers()

    def settled():
        d = Deployment.objects.get(pk=deployment.pk)
        return d if d.state in ("running", "failed") else None

    final = _reconcile_until(settled, timeout=900, what=f"{name} to settle after the crash")

    history = [e.message for e in final.events.all()]
    assert final.state in ("running", "failed"), (final.state, history)
    assert not Deployment.objects.filter(state__in=("pending", "building", "starting")).exists()
    assert not Build.objects.filter(deployment=final, status="building").exists()
    assert any("no progress in building" in m and "retrying" in m for m in history), history
    assert final.work_attempts in (0, 2, 3)  # reset to 0 once running
    if final.state == "running":
        assert _predict_each_replica(name, entry["input_example"], entry["expected_predict"]) == 1
        assert AuditEvent.objects.filter(action="deployment.running", target_name=name).exists()
    else:
        assert final.failure_reason
        assert AuditEvent.objects.filter(action="deployment.failed", target_name=name).exists()
    client.delete(f"/api/v1/deployments/{name}")


@pytest.mark.security
@pytest.mark.docker
def test_worker_killed_during_validation_is_recovered_by_the_reconciler_and_a_new_worker(
    transactional_db, crash_workers, api_client, manifest, tmp_path, own_containers
):
    entry = manifest["house_price_linreg.pkl"]
    name = f"house-vcrash-{uuid.uuid4().hex[:6]}"
    # A cold environment cache: building the model's environment keeps the worker busy
    # long enough to be killed in the middle of it.
    cold = {"PORTAL_ENV_CACHE": str(tmp_path / "envs")}
    first = crash_workers(**cold)
    client = api_client("deployer")
    with open(FIXTURE_DIR / "house_price_linreg.pkl", "rb") as fh:
        response = client.post(
            f"/api/v1/models/{name}/versions",
            {"file": fh, "input_example": json.dumps(entry["input_example"])},
            format="multipart",
        )
    assert response.status_code == HTTPStatus.CREATED, response.content
    version = ModelVersion.objects.get(model__name=name, number=response.json()["number"])

    def validating():
        status = ModelVersion.objects.get(pk=version.pk).status
        assert status in ("uploaded", "validating"), f"validation ended before the kill: {status}"
        return status == "validating"

    wait_for(validating, timeout=120, interval=0.05, what="validation to start")
    time.sleep(1)  # well inside the environment build
    first.kill()
    version.refresh_from_db()
    assert version.status == "validating" and version.validation_attempts == 1
    crash_workers(**cold)

    def settled():
        v = ModelVersion.objects.get(pk=version.pk)
        return v if v.status in ("ready", "invalid") else None

    final = _reconcile_until(settled, timeout=600, what=f"{name} v1 to settle after the crash")

    assert final.status == "ready", final.rejection_reason
    assert final.validation_attempts == 2
    assert final.python_requirements["scikit-learn"] == entry["sklearn_version"]
    assert final.example_output["predictions"] == pytest.approx(entry["expected_predict"])
    requeued = AuditEvent.objects.filter(
        action="model_version.validation_requeued", target_id=str(version.pk)
    ).order_by("id")
    assert requeued[0].details == {"was": "validating", "attempts": 1}
    assert AuditEvent.objects.filter(action="model_version.ready", target_id=str(version.pk))


# --------------------------------------------------------------------------- stuck work


def _stuck_deployment(name: str, *, attempts: int, quiet_for: float) -> Deployment:
    model = RegisteredModel.objects.create(name=name)
    version = ModelVersion.objects.create(
        model=model, number=1, status="ready", artifact_sha256="0" * 64, artifact_size=1
    )
    long_ago = timezone.now() - timedelta(seconds=quiet_for)
    deployment = Deployment.objects.create(
        name=name, model=model, version=version, runtime="process", state="building"
    )
    Deployment.objects.filter(pk=deployment.pk).update(
        heartbeat_at=long_ago, state_changed_at=long_ago, work_attempts=attempts
    )
    return deployment


def test_deployment_that_never_progresses_fails_after_max_attempts(db, settings, tmp_path):
    # The process runtime on a private folder: this reconcile touches nobody's containers.
    settings.PORTAL_RUNTIME = "process"
    settings.PORTAL_DATA_DIR = tmp_path
    settings.PORTAL_STALE_SECONDS = 5
    settings.PORTAL_MAX_WORK_ATTEMPTS = 3
    deployment = _stuck_deployment("never-progresses", attempts=3, quiet_for=60)

    summary = services.reconcile()

    deployment.refresh_from_db()
    assert summary["failed"] == 1 and summary["requeued"] == 0
    assert deployment.state == "failed"
    assert deployment.failure_reason == "stuck in building: no progress after 3 attempt(s)"
    audit = AuditEvent.objects.get(action="deployment.failed", target_name=deployment.name)
    assert audit.outcome == "failure" and "no progress" in audit.details["reason"]
    assert services.reconcile()["failed"] == 0  # failed is final: nothing more happens


def test_converge_runs_one_worker_at_a_time_per_deployment(db, settings, tmp_path, monkeypatch):
    """While a scale-up's converge waits for a new replica to load, the reconciler must not
    converge the same deployment (it would find that replica 'starting' and replace it)."""
    from django.core.cache import cache

    settings.PORTAL_RUNTIME = "process"
    settings.PORTAL_DATA_DIR = tmp_path
    deployment = _stuck_deployment(f"converging-{uuid.uuid4().hex[:6]}", attempts=0, quiet_for=0)
    Deployment.objects.filter(pk=deployment.pk).update(state="running", replicas=0)
    looked = []

    class Observed:
        name = "process"

        def list_replicas(self, name=None):
            looked.append(name)
            return []

    monkeypatch.setattr(services, "_runtime", lambda _deployment: Observed())
    key = f"portal:converge-{deployment.pk}"
    assert cache.add(key, "another worker", timeout=60)
    try:
        assert services.deployment_converge(deployment_id=deployment.pk) is False
        assert services.reconcile()["converged"] == 0
        assert looked == []
    finally:
        cache.delete(key)
    assert services.deployment_converge(deployment_id=deployment.pk) is True
    assert looked == [deployment.name]
    assert cache.add(key, "x", timeout=1)  # released
    cache.delete(key)
