"""Encrypted artifacts in images and replicas (#21), against the real Docker engine.

The image is built from the store's encrypted file: `docker save` of it holds the ciphertext
and no fragment of the model; a replica started with its data key (a 0400 file in its
private bind-mounted directory) serves the fixture's predictions; one started without it
exits saying so; after a master-key rotation the same image still starts and serves.
Everything created is labelled with this run's id and removed afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import secrets
import stat
import tarfile
import time
from pathlib import Path

import pytest

from deployments_app.runtimes.base import (
    MODEL_KEY_FILE,
    BuildSpec,
    ReplicaLimits,
    replica_request,
)
from deployments_app.runtimes.registry import get_runtime
from models_app import storage
from models_app.artifact_keys import artifacts_rotate_key
from models_app.keyprovider import EnvKeyProvider
from portal.audit import Actor
from tests.deployments_app.test_runtimes import (
    BASE_IMAGE,
    FIXTURES,
    HEALTH_TIMEOUT,
    PINS_191,
    SERVER_DIR,
    _docker_available,
)
from tests.services import require

RUN_ID = "enc" + secrets.token_hex(5)
LABELS = {"portal.test": "1", "portal.test.run": RUN_ID}
KEY_A = secrets.token_hex(32)
KEY_B = secrets.token_hex(32)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.docker,
    pytest.mark.skipif(
        not (FIXTURES / "manifest.json").exists(), reason="fixture models not on this machine"
    ),
]


def _cleanup() -> None:
    from deployments_app.runtimes.docker_runtime import client

    c = client(timeout=120)
    try:
        label = f"portal.test.run={RUN_ID}"
        for container in c.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)
        for image in c.images.list(filters={"label": label}):
            if BASE_IMAGE not in image.tags:
                with contextlib.suppress(Exception):
                    c.images.remove(image.id, force=True)
    finally:
        c.close()


@pytest.fixture
def docker_rt():
    require(_docker_available(), "a reachable Docker engine")
    runtime = get_runtime("docker")
    yield runtime
    _cleanup()


def _needles_found(path: Path, needles: list[bytes]) -> set[bytes]:
    """Which needles occur in any file of the saved image (layers, gzip or not)."""
    found: set[bytes] = set()
    overlap = max(len(n) for n in needles)
    with tarfile.open(path) as outer:
        for member in outer:
            if not member.isfile():
                continue
            fh = outer.extractfile(member)
            head = fh.read(2)
            fh.seek(0)
            stream = gzip.GzipFile(fileobj=fh) if head == b"\x1f\x8b" else fh
            tail = b""
            while block := stream.read(4 * 1024 * 1024):
                buf = tail + block
                found.update(n for n in needles if n in buf)
                tail = buf[-overlap:]
    return found


@pytest.mark.django_db
def test_the_image_holds_only_ciphertext_and_replicas_need_their_key(docker_rt, settings, tmp_path):
    settings.PORTAL_ARTIFACT_KEY = KEY_A
    settings.PORTAL_ARTIFACT_KEY_PREVIOUS = ""
    entry = {e["name"]: e for e in json.loads((FIXTURES / "manifest.json").read_text())}["spam"]
    data = (FIXTURES / entry["file"]).read_bytes()
    stored = storage.artifact_store([data])
    data_key = storage.artifact_data_key(stored.sha256)
    deployment = f"t-{RUN_ID}"
    spec = BuildSpec(
        deployment=deployment,
        model=f"test-enc-{RUN_ID}",
        version=1,
        artifact_path=stored.path,  # what services.build_spec passes: the encrypted file
        artifact_sha256=stored.sha256,
        fmt=entry["format"],
        requirements=PINS_191,
        columns=entry["columns"],
        base_image=BASE_IMAGE,
        wheelhouse=Path(settings.PORTAL_WHEELHOUSE),
        server_dir=SERVER_DIR,
        extra_labels=LABELS,
    )
    build = docker_rt.build(spec, log=lambda _line: None)

    # 1. docker save: the ciphertext is there, the model and its key are not.
    from deployments_app.runtimes.docker_runtime import client

    saved = tmp_path / "image.tar"
    c = client(timeout=600)
    try:
        with open(saved, "wb") as out:
            for part in c.images.get(build.ref).save(named=False):
                out.write(part)
    finally:
        c.close()
    step = (len(data) - 64) // 24
    plaintext = [data[i : i + 64] for i in range(0, len(data) - 64, step)]
    header = storage.artifact_header(stored.sha256)
    ciphertext_marker = header.aad()  # magic, chunk size and this file's random nonce prefix
    secrets_ = [data_key, data_key.hex().encode()]
    found = _needles_found(saved, [*plaintext, ciphertext_marker, *secrets_])
    saved.unlink()
    assert ciphertext_marker in found  # the scan does see the layer with the model file
    assert not [n for n in plaintext if n in found], "plaintext of the model in the image"
    assert not [n for n in secrets_ if n in found], "the data key in the image"

    limits = ReplicaLimits(memory_mb=512, cpus=1.0, pids=128, tmpfs_mb=64)
    token = docker_rt.replica_token(deployment)

    def start(index: int, key: bytes):
        started = time.monotonic()
        status = docker_rt.start_replica(
            deployment=deployment,
            index=index,
            build=build,
            spec=dataclasses.replace(spec, model_key=key),
            limits=limits,
            publish_host="127.0.0.1",
        )
        healthy = docker_rt.wait_healthy(status, HEALTH_TIMEOUT)
        return status, healthy, time.monotonic() - started

    def predicts(status) -> None:
        code, body = replica_request(
            status.endpoint,
            "POST",
            "/predict",
            body=json.dumps({"instances": entry["input_example"]}).encode(),
            token=token,
        )
        assert code == 200, body
        assert json.loads(body)["predictions"] == entry["expected_predict"]

    # 2. With its key (a 0400 file in the private directory, never in the environment).
    status, healthy, _ = start(0, data_key)
    assert healthy, status
    predicts(status)
    c = client()
    try:
        container = c.containers.get(status.name)
        env = container.attrs["Config"]["Env"]
        assert f"MODEL_KEY_FILE=/run/portal/{MODEL_KEY_FILE}" in env
        assert not [v for v in env if data_key.hex() in v]
        source = Path(container.attrs["Mounts"][0]["Source"])
        key_file = source / MODEL_KEY_FILE
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o400
        assert stat.S_IMODE(source.stat().st_mode) == 0o700
        assert key_file.read_text() == data_key.hex()
    finally:
        c.close()

    # 3. Without it: the replica exits and its status says why.
    status, healthy, _ = start(1, b"")
    assert not healthy
    current = docker_rt.replica(status.name)
    assert current.state == "exited"
    assert "no key was given (MODEL_KEY_FILE)" in current.detail, current.detail

    # ... and with a wrong one.
    status, healthy, _ = start(2, os.urandom(32))
    assert not healthy
    assert "does not open" in docker_rt.replica(status.name).detail

    # 4. Rotation: new master key, same data key, the same image starts and serves.
    settings.PORTAL_ARTIFACT_KEY, settings.PORTAL_ARTIFACT_KEY_PREVIOUS = KEY_B, KEY_A
    result = artifacts_rotate_key(
        provider=EnvKeyProvider.from_settings(), actor=Actor.system("test")
    )
    assert result.rewrapped == 1 and not result.failed
    settings.PORTAL_ARTIFACT_KEY_PREVIOUS = ""
    assert storage.artifact_data_key(stored.sha256) == data_key
    assert hashlib.sha256(storage.artifact_read(stored.sha256)).hexdigest() == stored.sha256
    docker_rt.remove_replica(replica_name_of(docker_rt, deployment, 0))
    status, healthy, _ = start(0, storage.artifact_data_key(stored.sha256))
    assert healthy, status
    predicts(status)


def replica_name_of(runtime, deployment: str, index: int) -> str:
    return next(s.name for s in runtime.list_replicas(deployment) if s.index == index)
