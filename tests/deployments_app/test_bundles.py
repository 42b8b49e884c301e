"""Edge bundles (#20): a ready version as a .tar.gz whose server runs without the portal."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from deployments_app.bundles import bundle_spec
from deployments_app.runtimes import get_runtime
from models_app.models import ModelVersion, RegisteredModel
from models_app.storage import artifact_store
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR, upload_and_wait_ready
from tests.services import free_port, wait_for_port


def _members(content: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        return {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.isfile()
        }


@pytest.mark.django_db
def test_a_version_not_ready_has_no_bundle_and_viewers_may_download(api_client):
    stored = artifact_store([b"\x80\x04N."])
    model = RegisteredModel.objects.create(name="m")
    ModelVersion.objects.create(
        model=model, number=1, status="validating", artifact_sha256=stored.sha256, artifact_size=4
    )
    client = api_client("viewer")
    assert client.get("/api/v1/models/m/versions/1/bundle").status_code == HTTPStatus.CONFLICT
    assert client.get("/api/v1/models/m/versions/2/bundle").status_code == HTTPStatus.NOT_FOUND
    ModelVersion.objects.filter(number=1).update(status="ready", format="pickle")
    response = client.get("/api/v1/models/m/versions/1/bundle")
    assert response.status_code == HTTPStatus.OK
    files = _members(b"".join(response.streaming_content))
    assert files["model.bin"] == b"\x80\x04N."
    assert {"server/server.py", "server/safe_load.py", "server/policy.py"} <= set(files)
    assert AuditEvent.objects.filter(action="model_version.bundle_downloaded").count() == 1


@pytest.mark.slow
def test_bundle_of_a_ready_version_runs_and_predicts_like_the_manifest(
    transactional_db, worker_storage, api_client, manifest, tmp_path, settings
):
    entry = manifest["house_price_linreg.pkl"]
    client = api_client("viewer")
    uploader = api_client("deployer")
    version = upload_and_wait_ready(
        uploader, "house", FIXTURE_DIR / "house_price_linreg.pkl", entry["input_example"]
    )
    response = client.get(f"/api/v1/models/house/versions/{version.number}/bundle")
    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "application/gzip"
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(b"".join(response.streaming_content))
    root = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    (bundle,) = root.iterdir()
    manifest_json = json.loads((bundle / "manifest.json").read_text())
    assert manifest_json["model"] == "house" and manifest_json["version"] == version.number
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {
        "manifest.json"
    }
    assert on_disk == set(manifest_json["files"])
    for name, digest in manifest_json["files"].items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest, name
    assert manifest_json["files"]["model.bin"] == version.artifact_sha256
    reqs = (bundle / "requirements.txt").read_text().splitlines()
    for name, pin in version.python_requirements.items():
        assert any(
            line.lower().replace("_", "-") == f"{name.lower().replace('_', '-')}=={pin}"
            for line in reqs
        ), name
    dockerfile = (bundle / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile
    assert "pip install -r requirements.txt" in (bundle / "README.txt").read_text()

    # The server, as README.txt says, in an environment with exactly these pins (the process
    # runtime's cached one for the same pin set), on a TCP port of 127.0.0.1.
    runtime = get_runtime("process")
    spec = dataclasses.replace(bundle_spec(version), base_image=settings.PORTAL_BASE_IMAGE)
    venv = runtime._venv_dir(spec)
    runtime._ensure_venv(spec, venv, lambda _line: None)
    port = free_port()
    argv = manifest_json["run"]
    assert (
        argv[0] == "python" and "--host" in argv and argv[argv.index("--host") + 1] == "127.0.0.1"
    )
    argv = [str(venv / "bin" / "python"), *argv[1:]]
    argv[argv.index("--port") + 1] = str(port)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        argv, cwd=bundle, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=60)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/predict",
            json={"instances": entry["input_example"]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == pytest.approx(entry["expected_predict"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()
    assert Path(tmp_path / "server.log").exists()


def _download_unpacked(client, url: str, dest: Path) -> Path:
    response = client.get(url)
    assert response.status_code == HTTPStatus.OK, getattr(response, "content", b"")[:500]
    archive = dest / "bundle.tar.gz"
    archive.write_bytes(b"".join(response.streaming_content))
    root = dest / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    (bundle,) = root.iterdir()
    return bundle


@pytest.mark.django_db
def test_bundle_flags_are_checked(api_client):
    stored = artifact_store([b"\x80\x04N."])
    model = RegisteredModel.objects.create(name="m")
    ModelVersion.objects.create(
        model=model, number=1, status="ready", format="pickle",
        artifact_sha256=stored.sha256, artifact_size=4,
    )  # fmt: skip
    client = api_client("viewer")
    response = client.get("/api/v1/models/m/versions/1/bundle?wheels=maybe")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "wheels" in response.json()["error"]
    files = _members(b"".join(client.get("/api/v1/models/m/versions/1/bundle").streaming_content))
    assert "wheels/WHEELS.txt" in files and not any(n.endswith(".whl") for n in files)


@pytest.mark.slow
def test_bundle_with_wheels_builds_offline_and_runs_under_docker(
    transactional_db, worker_storage, api_client, manifest, tmp_path, settings
):
    """The bundle's own Dockerfile, built from the unpacked folder with no network at all
    (?wheels=1 ships the pinned wheels) on the local base image, answers as the portal did."""
    import docker

    entry = manifest["house_price_linreg.pkl"]
    version = upload_and_wait_ready(
        api_client("deployer"), "house", FIXTURE_DIR / "house_price_linreg.pkl",
        entry["input_example"],
    )  # fmt: skip
    bundle = _download_unpacked(
        api_client("viewer"), f"/api/v1/models/house/versions/{version.number}/bundle?wheels=1",
        tmp_path,
    )  # fmt: skip
    manifest_json = json.loads((bundle / "manifest.json").read_text())
    wheels = sorted(p.name for p in (bundle / "wheels").glob("*.whl"))
    assert any(w.startswith("scikit_learn-1.5.2-") for w in wheels), wheels
    for name in wheels:
        digest = hashlib.sha256((bundle / "wheels" / name).read_bytes()).hexdigest()
        assert manifest_json["files"][f"wheels/{name}"] == digest
    assert AuditEvent.objects.filter(
        action="model_version.bundle_downloaded", details__wheels=True
    ).exists()

    engine = docker.from_env(timeout=600)
    instance = settings.PORTAL_INSTANCE
    tag = f"portal-bundle-{instance}-house:v{version.number}"
    name = f"portal-bundle-{instance}-house-{os.getpid()}"
    port = free_port()
    container = None
    try:
        engine.images.build(
            path=str(bundle), tag=tag, buildargs={"BASE_IMAGE": settings.PORTAL_BASE_IMAGE},
            network_mode="none", rm=True, forcerm=True,
        )  # fmt: skip
        container = engine.containers.run(
            tag, name=name, detach=True, ports={"8080/tcp": ("127.0.0.1", port)}
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            container.reload()
            assert container.status in ("created", "running"), container.logs()[-2000:]
            assert time.monotonic() < deadline, container.logs()[-2000:]
            time.sleep(0.5)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/predict",
            json={"instances": entry["input_example"]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert predictions == pytest.approx(version.example_output["predictions"], rel=1e-12)
        assert predictions == pytest.approx(entry["expected_predict"])
    finally:
        if container is not None:
            container.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove(tag, force=True)
        engine.close()
