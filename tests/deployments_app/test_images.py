"""Image pruning on a real Docker engine: images no build record keeps are removed, images a
replica uses, images of another portal instance, young images and dependency stages still in
use stay; the service writes one audit row; a deployment whose image was pruned builds it
again instead of failing.

Every image here is a tiny labelled image built from the local base image and belongs to a
private instance name, so a run on a shared engine touches nothing of anybody else's. The
images' age is the one thing faked (an image just built cannot be an hour old).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import uuid

import pytest

from deployments_app import services
from deployments_app.models import Build, Deployment
from models_app.models import ModelVersion, RegisteredModel
from portal.models import AuditEvent

RUN_ID = uuid.uuid4().hex[:10]
TEST_LABEL = f"portal.test.run={RUN_ID}"
INSTANCE = f"prune-{RUN_ID}"
BASE_IMAGE = os.environ.get("PORTAL_BASE_IMAGE", "portal-base:bookworm")
if BASE_IMAGE.startswith("python:"):
    BASE_IMAGE = "portal-base:bookworm"


@pytest.fixture
def engine():
    from deployments_app.runtimes.docker_runtime import client, docker_ping

    try:
        reachable = docker_ping()
    except Exception:  # noqa: BLE001 - no SDK or no daemon: both mean "not reachable"
        reachable = False
    if not reachable:
        if os.environ.get("PORTAL_REQUIRE_SERVICES"):
            pytest.fail("a reachable Docker engine is required (PORTAL_REQUIRE_SERVICES=1)")
        pytest.skip("no reachable Docker engine")
    c = client(timeout=120)
    try:
        yield c
    finally:
        for container in c.containers.list(all=True, filters={"label": TEST_LABEL}):
            container.remove(force=True)
        for image in c.images.list(filters={"label": TEST_LABEL}):
            with contextlib.suppress(Exception):
                c.images.remove(image.id, force=True)
        c.close()


@pytest.fixture
def old_test_images(monkeypatch):
    """Images of this test count as two hours old; every other image on the engine stays
    as young as it is (so nothing outside this test is ever old enough to prune)."""
    from deployments_app.runtimes import docker_runtime

    def created(image):
        if (image.labels or {}).get("portal.test.run") == RUN_ID:
            return time.time() - 7200
        return time.time()

    monkeypatch.setattr(docker_runtime, "_created", created)


def _image(c, tag: str | None, **labels: str) -> str:
    """A tiny image with portal's labels (plus this test's), tagged `tag`; returns its id."""
    labels = {"portal.managed": "1", "portal.test.run": RUN_ID, **labels}
    dockerfile = f"FROM {BASE_IMAGE}\nLABEL portal.test.nonce={uuid.uuid4().hex}\n"
    image, _ = c.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), labels=labels, pull=False, rm=True, tag=tag
    )
    return image.id


def _exists(c, ref: str) -> bool:
    import docker.errors

    try:
        c.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


@pytest.mark.docker
def test_docker_prune_removes_only_unkept_old_images_of_its_instance(engine, old_test_images):
    from deployments_app.runtimes.docker_runtime import DockerRuntime

    c = engine
    runtime = DockerRuntime(instance=INSTANCE)
    mine = {"portal.instance": INSTANCE}
    pins_used, pins_gone = f"used-{RUN_ID}", f"gone-{RUN_ID}"
    kept = f"portal-model/prune-{RUN_ID}-kept:v1"
    stale = f"portal-model/prune-{RUN_ID}-stale:v1"
    running = f"portal-model/prune-{RUN_ID}-running:v1"
    theirs = f"portal-model/prune-{RUN_ID}-theirs:v1"
    _image(c, kept, **mine, **{"portal.pins": pins_used})
    _image(c, stale, **mine, **{"portal.pins": pins_gone})
    _image(c, running, **mine, **{"portal.pins": pins_gone})
    _image(c, theirs, **{"portal.instance": f"other-{RUN_ID}", "portal.pins": pins_gone})
    deps_used = _image(c, None, **{"portal.stage": "deps", "portal.pins": pins_used})
    deps_gone = _image(c, None, **{"portal.stage": "deps", "portal.pins": f"none-{RUN_ID}"})
    c.containers.create(running, labels={"portal.test.run": RUN_ID})  # uses `running`

    # Younger than the minimum age: nothing goes.
    assert runtime.prune_images([kept], min_age_s=3 * 3600) == []

    pruned = runtime.prune_images([kept], min_age_s=3600)

    assert sorted(p.ref for p in pruned) == sorted([stale, f"deps:{f'none-{RUN_ID}'[:12]}"])
    assert all(p.size_bytes > 0 for p in pruned)
    assert not _exists(c, stale) and not _exists(c, deps_gone)
    assert _exists(c, kept)  # a build record keeps it
    assert _exists(c, running)  # a container uses it: the engine refuses
    assert _exists(c, theirs)  # another portal's
    assert _exists(c, deps_used)  # `kept` needs these pins
    assert runtime.has_image(kept) and not runtime.has_image(stale)


def _deployment_with_build(name: str, image_ref: str) -> Deployment:
    model = RegisteredModel.objects.create(name=name)
    version = ModelVersion.objects.create(
        model=model, number=1, status="ready", artifact_sha256="0" * 64, artifact_size=1
    )
    deployment = Deployment.objects.create(
        name=name, model=model, version=version, runtime="docker", state="running"
    )
    Build.objects.create(
        deployment=deployment, version=version, status="succeeded", image_ref=image_ref
    )
    return deployment


@pytest.mark.docker
def test_prune_service_keeps_recorded_builds_audits_and_the_command_reports(
    db, engine, old_test_images, settings, capsys, tmp_path
):
    from django.core.management import call_command

    settings.PORTAL_INSTANCE = INSTANCE
    settings.PORTAL_DATA_DIR = tmp_path  # the process runtime's builds: one old, one recorded
    builds = tmp_path / "runtime" / "builds"
    for tag in ("proc-recorded", "proc-deleted"):
        (builds / tag).mkdir(parents=True)
        (builds / tag / "build.json").write_text("{}")
        os.utime(builds / tag, (time.time() - 7200, time.time() - 7200))
    c = engine
    recorded = f"portal-model/prune-{RUN_ID}-recorded:v1"
    deleted = f"portal-model/prune-{RUN_ID}-deleted:v1"
    for tag in (recorded, deleted):
        _image(c, tag, **{"portal.instance": INSTANCE})
    _deployment_with_build(f"recorded-{RUN_ID}", recorded)
    _deployment_with_build(f"proc-recorded-{RUN_ID}", "proc-recorded")
    gone = _deployment_with_build(f"deleted-{RUN_ID}", deleted)
    gone.delete()  # its Build rows go with it (as deployment_delete does)

    summary = services.images_prune(min_age_s=3600)

    assert summary["runtimes"] == ["docker", "process"]
    assert summary["removed"] == [deleted, "proc-deleted"]
    assert _exists(c, recorded) and not _exists(c, deleted)
    assert (builds / "proc-recorded").exists() and not (builds / "proc-deleted").exists()
    audit = AuditEvent.objects.get(action="runtime.images_pruned")
    assert audit.actor_name == "image-pruner" and audit.details["removed"] == summary["removed"]
    assert audit.details["freed_bytes"] == summary["freed_bytes"] > 0

    # Nothing left to prune: no second audit row; the command says so.
    call_command("prune_images", "--min-age", "3600")
    assert "0 image(s) removed (docker, process)" in capsys.readouterr().out
    assert AuditEvent.objects.filter(action="runtime.images_pruned").count() == 1


def test_prune_task_is_scheduled_and_runs_one_at_a_time(monkeypatch, settings):
    from django.core.cache import cache

    from deployments_app import tasks

    entry = settings.CELERY_BEAT_SCHEDULE["prune-images"]
    assert entry["task"] == "deployments_app.tasks.prune_images"
    assert entry["schedule"] == settings.PORTAL_IMAGE_PRUNE_SECONDS
    runs = []
    monkeypatch.setattr(services, "images_prune", lambda: runs.append(1))
    assert cache.add("portal:prune-lock", "1", timeout=60)  # another worker is pruning
    try:
        tasks.prune_images()
        assert runs == []
    finally:
        cache.delete("portal:prune-lock")
    tasks.prune_images()
    assert runs == [1]
    assert cache.add("portal:prune-lock", "1", timeout=1)  # released after the run
    cache.delete("portal:prune-lock")
