"""The runtime backends against the real thing: the Docker engine with the real base image,
and local processes, serving the fixture models written by scikit-learn 1.9.1.

Everything a test creates carries `portal.test=1` and this run's id
(`portal.test.run`) and is removed in fixture teardown: containers, images (including
the cached dependency stage) and processes. `portal-base:bookworm` is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from deployments_app.runtimes.base import (
    BuildError,
    BuildSpec,
    ReplicaLimits,
    Runtime,
    replica_name,
    replica_request,
)
from deployments_app.runtimes.registry import get_runtime
from tests.services import require

REPO = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO / "deployments_app" / "model_server"
FIXTURES = Path("/work/shared/fixtures/models")
BASE_IMAGE = os.environ.get("PORTAL_BASE_IMAGE", "portal-base:bookworm")
if BASE_IMAGE.startswith("python:"):  # settings' default names a Docker Hub image we can't pull
    BASE_IMAGE = "portal-base:bookworm"
RUN_ID = uuid.uuid4().hex[:12]
TEST_LABELS = {"portal.test": "1", "portal.test.run": RUN_ID}
# What the 1.9.1 fixtures were written with, and versions that install together with it
# (the project venv runs this exact set). skops is in for both models so that spam and
# diabetes share one dependency layer.
PINS_191 = {
    "scikit-learn": "1.9.1",
    "numpy": "2.4.6",
    "scipy": "1.17.1",
    "joblib": "1.6.0",
    "threadpoolctl": "3.8.0",
    "pandas": "3.1.1",
    "skops": "0.16.0",
}
HEALTH_TIMEOUT = 90

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (FIXTURES / "manifest.json").exists(), reason="fixture models not on this machine"
    ),
]


def _manifest() -> dict:
    return {e["name"]: e for e in json.loads((FIXTURES / "manifest.json").read_text())}


def _spec(tmp: Path, name: str, *, deployment: str, version: int = 1) -> BuildSpec:
    entry = _manifest()[name]
    artifact = tmp / entry["file"]
    shutil.copyfile(FIXTURES / entry["file"], artifact)
    return BuildSpec(
        deployment=deployment,
        model=f"test-{name}-{RUN_ID}",
        version=version,
        artifact_path=artifact,
        artifact_sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
        fmt=entry["format"],
        requirements=PINS_191,
        columns=entry["columns"] if name == "spam" else None,
        # What the portal's validation reports and an approver accepts for a skops file.
        base_image=BASE_IMAGE,
        wheelhouse=Path(settings.PORTAL_WHEELHOUSE),
        server_dir=SERVER_DIR,
        extra_labels=TEST_LABELS,
    )


def _predict(endpoint: str, instances: list) -> list:
    status, body = replica_request(
        endpoint, "POST", "/predict", body=json.dumps({"instances": instances}).encode()
    )
    assert status == 200, body
    return json.loads(body)["predictions"]


def _assert_predicts(endpoint: str, name: str) -> None:
    entry = _manifest()[name]
    got = _predict(endpoint, entry["input_example"])
    assert got == pytest.approx(entry["expected_predict"], rel=1e-9)


# --------------------------------------------------------------------------------------
# docker
# --------------------------------------------------------------------------------------


def _docker_available() -> bool:
    try:
        from deployments_app.runtimes.docker_runtime import docker_ping

        return docker_ping()
    except Exception:  # noqa: BLE001 - no SDK or no daemon: both mean "not reachable"
        return False


def _cleanup_docker() -> None:
    from deployments_app.runtimes.docker_runtime import client

    c = client(timeout=120)
    try:
        run_label = f"portal.test.run={RUN_ID}"
        for container in c.containers.list(all=True, filters={"label": run_label}):
            container.remove(force=True)
        # Final images first (their untagged parents go with them), then the dependency stages.
        for stage_filter in ({"label": run_label}, {"label": [run_label, "portal.stage=deps"]}):
            for image in c.images.list(filters=stage_filter):
                if BASE_IMAGE in image.tags:
                    continue
                # An image may already be gone with a removed child.
                with contextlib.suppress(Exception):
                    c.images.remove(image.id, force=True)
    finally:
        c.close()


@pytest.fixture(scope="module")
def docker_rt():
    require(_docker_available(), "a reachable Docker engine")
    from deployments_app.runtimes.docker_runtime import client

    c = client()
    try:
        names = [
            tag for image in c.images.list(name=BASE_IMAGE.split(":")[0]) for tag in image.tags
        ]
    finally:
        c.close()
    require(BASE_IMAGE in names, f"the base image {BASE_IMAGE}")
    runtime = get_runtime("docker")
    yield runtime
    _cleanup_docker()


@pytest.fixture(scope="module")
def docker_builds(docker_rt, tmp_path_factory):
    """spam first (cold: its own dependency stage), then diabetes on the same pins."""
    tmp = tmp_path_factory.mktemp("docker-builds")
    lines: list[str] = []
    spam = _spec(tmp, "spam", deployment=f"t-{RUN_ID}-spam")
    spam_build = docker_rt.build(spam, log=lines.append)
    diabetes = _spec(tmp, "diabetes", deployment=f"t-{RUN_ID}-diabetes")
    diabetes_lines: list[str] = []
    diabetes_build = docker_rt.build(diabetes, log=diabetes_lines.append)
    return {
        "spam": (spam, spam_build, lines),
        "diabetes": (diabetes, diabetes_build, diabetes_lines),
    }


@pytest.mark.docker
def test_docker_build_streams_log_labels_image_and_stays_small(docker_builds):
    from deployments_app.runtimes.docker_runtime import client

    spec, build, lines = docker_builds["spam"]
    assert not build.cached
    assert any("Successfully tagged" in line for line in lines)
    assert build.ref.startswith(f"portal-model/test-spam-{RUN_ID}:v1-")
    assert build.digest.startswith("sha256:")
    assert 0 < build.size_bytes < 450 * 1024 * 1024
    c = client()
    try:
        labels = c.images.get(build.ref).labels
    finally:
        c.close()
    assert labels["portal.managed"] == "1"
    assert labels["portal.model"] == spec.model
    assert labels["portal.version"] == "1"
    assert labels["portal.artifact_sha256"] == spec.artifact_sha256


@pytest.mark.docker
def test_docker_rebuild_of_same_spec_reuses_the_tagged_image(docker_rt, docker_builds):
    spec, build, _ = docker_builds["spam"]
    again = docker_rt.build(spec, log=lambda _line: None)
    assert again.cached
    assert (again.ref, again.digest) == (build.ref, build.digest)


@pytest.mark.docker
def test_docker_models_with_same_pins_share_the_dependency_layer(docker_builds):
    from deployments_app.runtimes.docker_runtime import client

    _, spam_build, _ = docker_builds["spam"]
    _, diabetes_build, diabetes_lines = docker_builds["diabetes"]
    assert spam_build.digest != diabetes_build.digest
    assert any("Using cache" in line for line in diabetes_lines)
    c = client()
    try:
        base_layers = c.images.get(BASE_IMAGE).attrs["RootFS"]["Layers"]
        spam_layers = c.images.get(spam_build.ref).attrs["RootFS"]["Layers"]
        diabetes_layers = c.images.get(diabetes_build.ref).attrs["RootFS"]["Layers"]
    finally:
        c.close()
    venv_layer = len(base_layers)  # the first layer on top of the base: /opt/venv
    assert spam_layers[: venv_layer + 1] == diabetes_layers[: venv_layer + 1]
    # ... and the model file is the only layer that differs.
    assert spam_layers[-1] != diabetes_layers[-1]
    assert spam_layers[:-1] == diabetes_layers[:-1]


@pytest.mark.docker
def test_docker_build_failure_raises_build_error_with_the_stream_error(docker_rt, tmp_path):
    from deployments_app.runtimes.docker_runtime import client

    # A base without a shell: `RUN python3 -m venv` fails inside the builder, no pull needed.
    c = client(timeout=120)
    try:
        c.images.build(
            fileobj=io.BytesIO(b"FROM scratch\nLABEL portal.test=1\n"),
            tag=f"portal-test-bare:{RUN_ID}",
            labels=TEST_LABELS,
            rm=True,
        )
    finally:
        c.close()
    spec = _spec(tmp_path, "spam", deployment=f"t-{RUN_ID}-broken")
    spec = dataclasses.replace(spec, base_image=f"portal-test-bare:{RUN_ID}")
    with pytest.raises(BuildError) as excinfo:
        docker_rt.build(spec, log=lambda _line: None)
    assert "failed" in str(excinfo.value)
    assert excinfo.value.log_tail


@pytest.mark.docker
def test_docker_build_with_a_base_image_it_cannot_get_says_so_before_downloading(
    docker_rt, tmp_path
):
    # A registry that refuses at once: the same answer an offline engine gives for Docker Hub.
    spec = _spec(tmp_path, "spam", deployment=f"t-{RUN_ID}-nobase")
    base = "127.0.0.1:9/portal-no-such-base:1"
    spec = dataclasses.replace(spec, base_image=base)
    lines: list[str] = []
    with pytest.raises(BuildError) as excinfo:
        docker_rt.build(spec, log=lines.append)
    message = str(excinfo.value)
    assert f"base image {base} is not on this Docker engine" in message
    assert "PORTAL_BASE_IMAGE" in message
    assert "\n" not in excinfo.value.message
    # It failed before the build context (wheels, Dockerfile) was prepared.
    assert lines == [f"base image {base} is not on this engine; pulling it"]


@pytest.mark.docker
def test_docker_replicas_serve_predictions_hardened_and_are_found_by_label(
    docker_rt: Runtime, docker_builds
):
    from deployments_app.runtimes.docker_runtime import client

    spec, build, _ = docker_builds["spam"]
    deployment = spec.deployment
    limits = ReplicaLimits(memory_mb=512, cpus=1.0, pids=128, tmpfs_mb=64)

    def start(runtime, index):
        return runtime.start_replica(
            deployment=deployment,
            index=index,
            build=build,
            spec=spec,
            limits=limits,
            publish_host="127.0.0.1",
        )

    started = [start(docker_rt, i) for i in (0, 1)]
    assert [s.name for s in started] == [replica_name(deployment, 0), replica_name(deployment, 1)]
    for status in started:
        assert docker_rt.wait_healthy(status, HEALTH_TIMEOUT), status
    listed = docker_rt.list_replicas(deployment)
    assert [(s.index, s.state, s.healthy) for s in listed] == [
        (0, "running", True),
        (1, "running", True),
    ]
    endpoints = {s.endpoint for s in listed}
    assert len(endpoints) == 2
    for status in listed:
        assert status.endpoint.startswith("unix:/") and status.endpoint.endswith("/http.sock")
        assert status.version == 1
        _assert_predicts(status.endpoint, "spam")

    c = client()
    try:
        container = c.containers.get(started[0].name)
        host_config = container.attrs["HostConfig"]
        assert host_config["ReadonlyRootfs"] is True
        assert host_config["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host_config["SecurityOpt"]
        assert host_config["Privileged"] is False
        assert host_config["Memory"] == 512 * 1024 * 1024
        assert host_config["NanoCpus"] == 1_000_000_000
        assert host_config["PidsLimit"] == 128
        assert host_config["Tmpfs"] == {"/tmp": "size=64m"}
        assert host_config["RestartPolicy"]["Name"] in ("", "no")
        # No network at all, no published port; one mount: the replica's socket directory.
        assert host_config["NetworkMode"] == "none"
        assert not host_config.get("PortBindings")
        [mount] = container.attrs["Mounts"]
        assert (mount["Type"], mount["Destination"]) == ("bind", "/run/portal")
        assert f"unix:{mount['Source']}/http.sock" == started[0].endpoint
        assert container.attrs["Config"]["User"] == "10001:10001"
        assert container.exec_run("id -u").output.strip() == b"10001"
        assert container.labels["portal.managed"] == "1"
        assert container.labels["portal.deployment"] == deployment
        assert container.labels["portal.replica"] == "0"

        # Idempotent: the same name and image reuse the running container.
        again = start(docker_rt, 0)
        assert again.name == started[0].name
        assert c.containers.get(again.name).id == container.id
        assert container.labels["portal.instance"] == "portal"

        # A second portal on the same engine: same deployment name, its own container; each
        # portal lists (and so reconciles) only its own replicas.
        from deployments_app.runtimes.docker_runtime import DockerRuntime

        other = DockerRuntime(instance=f"other-{RUN_ID[:8]}")
        theirs = start(other, 0)
        try:
            assert theirs.name == f"other-{RUN_ID[:8]}-{deployment}-0" != started[0].name
            assert [s.name for s in other.list_replicas(deployment)] == [theirs.name]
            assert theirs.name not in {s.name for s in docker_rt.list_replicas()}
            assert c.containers.get(started[0].name).id == container.id  # untouched
        finally:
            other.remove_replica(theirs.name)

        c.containers.get(started[1].name).kill()
    finally:
        c.close()
    states = {s.index: s for s in docker_rt.list_replicas(deployment)}
    assert states[1].state == "exited" and not states[1].healthy and states[1].endpoint is None
    assert states[0].state == "running"
    # A fresh runtime object (a restarted portal) finds the same replicas by their labels.
    assert {s.name for s in get_runtime("docker").list_replicas(deployment)} == {
        s.name for s in started
    }

    for status in started:
        docker_rt.stop_replica(status.name)
    assert all(s.state == "exited" for s in docker_rt.list_replicas(deployment))
    for status in started:
        docker_rt.remove_replica(status.name)
    assert docker_rt.list_replicas(deployment) == []


@pytest.mark.docker
def test_docker_skops_model_serves_its_predictions(docker_rt: Runtime, docker_builds):
    spec, build, _ = docker_builds["diabetes"]
    status = docker_rt.start_replica(
        deployment=spec.deployment,
        index=0,
        build=build,
        spec=spec,
        limits=ReplicaLimits(),
        publish_host="127.0.0.1",
    )
    try:
        assert docker_rt.wait_healthy(status, HEALTH_TIMEOUT)
        _assert_predicts(docker_rt.list_replicas(spec.deployment)[0].endpoint, "diabetes")
    finally:
        docker_rt.remove_replica(status.name)
    docker_rt.remove_image(build.ref)
    docker_rt.remove_image(build.ref)  # removing twice is fine


# --------------------------------------------------------------------------------------
# local processes
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def process_roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("process-runtime")
    roots = {"state_root": root / "state", "env_root": root / "envs"}
    yield roots
    runtime = get_runtime("process", **roots)
    for status in runtime.list_replicas():
        runtime.remove_replica(status.name)


def _pid(roots: dict, name: str) -> int:
    return json.loads((roots["state_root"] / "replicas" / f"{name}.json").read_text())["pid"]


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def test_process_replicas_serve_predictions_and_survive_a_portal_restart(process_roots, tmp_path):
    runtime = get_runtime("process", **process_roots)
    spec = _spec(tmp_path, "spam", deployment=f"p-{RUN_ID}")
    build = runtime.build(spec, log=lambda _line: None)
    assert not build.cached
    assert runtime.build(spec, log=lambda _line: None).cached

    started = [
        runtime.start_replica(
            deployment=spec.deployment,
            index=i,
            build=build,
            spec=spec,
            limits=ReplicaLimits(memory_mb=1024),
            publish_host="127.0.0.1",
        )
        for i in (0, 1)
    ]
    for status in started:
        assert runtime.wait_healthy(status, HEALTH_TIMEOUT), runtime.list_replicas()
    listed = runtime.list_replicas(spec.deployment)
    assert [(s.index, s.state, s.healthy) for s in listed] == [
        (0, "running", True),
        (1, "running", True),
    ]
    for status in listed:
        _assert_predicts(status.endpoint, "spam")

    # Idempotent start: the same build keeps the same process.
    pid0 = _pid(process_roots, started[0].name)
    runtime.start_replica(
        deployment=spec.deployment,
        index=0,
        build=build,
        spec=spec,
        limits=ReplicaLimits(memory_mb=1024),
        publish_host="127.0.0.1",
    )
    assert _pid(process_roots, started[0].name) == pid0

    # A restarted portal (a new runtime object) finds both from their state files.
    restarted = get_runtime("process", **process_roots)
    assert [s.name for s in restarted.list_replicas(spec.deployment)] == [s.name for s in started]

    pid1 = _pid(process_roots, started[1].name)
    os.kill(pid1, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while runtime.list_replicas(spec.deployment)[1].state != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    states = runtime.list_replicas(spec.deployment)
    assert states[1].endpoint is None and not states[1].healthy
    assert states[0].state == "running"

    # Pruning: a build that nothing keeps goes; the one a live replica runs stays.
    spare_spec = _spec(tmp_path, "spam", deployment=f"p-{RUN_ID}", version=2)
    spare = runtime.build(spare_spec, log=lambda _line: None)
    assert spare.ref != build.ref and runtime.has_image(spare.ref)
    assert runtime.prune_images([], min_age_s=3600) == []  # both younger than that
    pruned = runtime.prune_images([], min_age_s=0)
    assert [p.ref for p in pruned] == [spare.ref] and pruned[0].size_bytes > 0
    assert not runtime.has_image(spare.ref) and runtime.has_image(build.ref)

    for status in started:
        runtime.stop_replica(status.name)
    assert not _pid_alive(pid0)
    for status in started:
        runtime.remove_replica(status.name)
    assert runtime.list_replicas(spec.deployment) == []
    runtime.remove_image(build.ref)
    assert not (process_roots["state_root"] / "builds" / build.ref).exists()


def test_process_replica_with_a_reused_pid_is_not_ours(process_roots):
    """A state file whose pid now belongs to another program reports the replica exited."""
    runtime = get_runtime("process", **process_roots)
    replicas = process_roots["state_root"] / "replicas"
    replicas.mkdir(parents=True, exist_ok=True)
    name = replica_name(f"p-{RUN_ID}-stale", 0)
    (replicas / f"{name}.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),  # alive, but it is pytest, not a model server
                "cmdline": ["/nonexistent/python", "server.py"],
                "host": "127.0.0.1",
                "port": 1,
                "build": "x",
                "version": 1,
                "deployment": f"p-{RUN_ID}-stale",
                "index": 0,
                "started_at": time.time(),
            }
        )
    )
    [status] = runtime.list_replicas(f"p-{RUN_ID}-stale")
    assert status.state == "exited"
    runtime.stop_replica(name)  # must not signal pytest
    runtime.remove_replica(name)
    assert runtime.list_replicas(f"p-{RUN_ID}-stale") == []


def test_get_runtime_rejects_unknown_names_and_missing_process_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown runtime"):
        get_runtime("kubernetes")
    with pytest.raises(ValueError, match="state_root"):
        get_runtime("process", env_root=tmp_path)
    assert get_runtime("process", state_root=tmp_path, env_root=tmp_path).ping()
