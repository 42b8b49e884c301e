"""The reconciler runs every PORTAL_RECONCILE_SECONDS: at INFO it says nothing unless it
changed something, and then one line per change."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace

import pytest
from django.conf import settings as dj_settings

from deployments_app import services
from deployments_app.models import Build, Deployment, Replica
from deployments_app.runtimes.base import ReplicaStatus, replica_name
from models_app.models import ModelVersion, RegisteredModel


class _Observed:
    """A runtime whose replicas the test sets (what an engine would report)."""

    name = "process"

    def __init__(self) -> None:
        self.replicas: dict[str, ReplicaStatus] = {}

    def list_replicas(self, deployment: str | None = None) -> list[ReplicaStatus]:
        return [s for s in self.replicas.values() if deployment in (None, s.deployment)]

    def remove_replica(self, name: str) -> None:
        self.replicas.pop(name, None)

    def start_replica(self, *, deployment, index, build, spec, limits, publish_host):
        status = ReplicaStatus(
            name=replica_name(deployment, index, dj_settings.PORTAL_INSTANCE),
            index=index,
            deployment=deployment,
            version=1,
            state="running",
            healthy=True,
            endpoint="http://127.0.0.1:9",
            ref=getattr(build, "ref", ""),
        )
        self.replicas[status.name] = status
        return status

    def wait_healthy(self, status, timeout):
        return True

    def has_image(self, ref: str) -> bool:
        return True


@dataclass(frozen=True)
class _NoSpec:
    model_key: bytes = b""


@pytest.fixture
def running(db, monkeypatch):
    """A running deployment with one healthy replica, on the observed runtime."""
    runtime = _Observed()
    monkeypatch.setattr(services, "_runtime", lambda _deployment: runtime)
    monkeypatch.setattr(services, "get_runtime", lambda name=None: runtime)
    # No image and no artifact behind this deployment: a spec the runtime ignores.
    monkeypatch.setattr(services, "build_spec", lambda deployment, version: _NoSpec())
    monkeypatch.setattr(services, "artifact_data_key", lambda sha256: b"k" * 32)
    monkeypatch.setattr(services, "_answers", lambda status: status.healthy)
    name = f"quiet-{uuid.uuid4().hex[:6]}"
    model = RegisteredModel.objects.create(name=name)
    version = ModelVersion.objects.create(
        model=model, number=1, status="ready", artifact_sha256="0" * 64, artifact_size=1
    )
    deployment = Deployment.objects.create(
        name=name, model=model, version=version, runtime="process", replicas=1, state="running"
    )
    Build.objects.create(
        deployment=deployment, version=version, status="succeeded", image_ref="img:1"
    )
    status = runtime.start_replica(
        deployment=name, index=0, build=Build.objects.get(deployment=deployment), spec=None,
        limits=None, publish_host="",
    )  # fmt: skip
    Replica.objects.create(
        deployment=deployment, name=status.name, index=0, version_number=1, healthy=True,
        endpoint=status.endpoint, state="running",
    )  # fmt: skip
    return deployment, runtime


def _info_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


def test_an_idle_reconcile_logs_nothing_at_info(running, caplog):
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        services.reconcile()
    assert _info_lines(caplog) == []
    assert any(r.levelno == logging.DEBUG and "reconcile" in r.getMessage() for r in caplog.records)


def test_a_replaced_replica_logs_one_line(running, caplog):
    deployment, runtime = running
    [name] = runtime.replicas
    runtime.replicas[name] = replace(runtime.replicas[name], state="exited", healthy=False)
    caplog.set_level(logging.INFO)

    services.reconcile()
    services.reconcile()  # repaired: the next run is quiet again

    lines = _info_lines(caplog)
    assert len(lines) == 1, lines
    assert deployment.name in lines[0] and f"replica {name} was exited" in lines[0]
    assert runtime.replicas[name].state == "running"


def test_celerys_routine_lines_are_below_info():
    """Each task received and succeeded, each beat tick: DEBUG unless PORTAL_LOG_LEVEL=DEBUG."""
    for name in ("celery.app.trace", "celery.worker.strategy", "celery.beat"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
    assert logging.getLogger("deployments_app.services").isEnabledFor(logging.INFO)
