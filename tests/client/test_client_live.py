"""The Python client and the `portal` CLI against a live portal (#20): a real HTTP server on
the test database (pytest-django's live_server, so the test's settings and Celery queue are
the server's), the real Celery worker, process-runtime replicas."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from portal_client import PortalClient, PortalError
from sklearn.linear_model import LinearRegression

from portal.audit import Actor
from portal.models import AuditEvent
from portal.tokens import access_token_create
from tests.conftest import FIXTURE_DIR

pytestmark = [pytest.mark.slow]

ROWS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def _fitted(coef: list[float], intercept: float) -> LinearRegression:
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 10, size=(50, 3))  # noqa: N806 - the usual name of a design matrix
    return LinearRegression().fit(X, X @ np.array(coef) + intercept)


def _expected(model: LinearRegression) -> list[float]:
    return model.predict(np.array(ROWS)).tolist()


def _token(user, scopes: list[str]) -> str:
    return access_token_create(user=user, actor=Actor.system(), name="test", scopes=scopes)[1]


@pytest.fixture
def portal_env(transactional_db, worker_storage, live_server, settings):
    settings.PORTAL_ALLOWED_RUNTIMES = ["docker", "process"]
    return live_server.url


@pytest.fixture
def cleanup_deployments(portal_env):
    names: list[str] = []
    yield names
    from deployments_app import services
    from deployments_app.models import Deployment

    for deployment in Deployment.objects.filter(name__in=names):
        services.deployment_delete(deployment=deployment, actor=Actor.system())


def test_client_registers_approves_deploys_predicts_updates_and_rolls_back(
    portal_env, make_user, settings, tmp_path, cleanup_deployments
):
    settings.PORTAL_REQUIRE_APPROVAL = True  # the gate is part of this flow
    uploader, approver = make_user("deployer"), make_user("approver")
    client = PortalClient(portal_env, _token(uploader, ["upload", "deploy"]), progress=True)
    reviewer = PortalClient(portal_env, _token(approver, ["approve"]), progress=True)
    name = f"client-{uuid.uuid4().hex[:6]}"
    cleanup_deployments.append(name)
    m1, m2 = _fitted([100, 10, 5], 7), _fitted([1, 2, 3], -4)

    v1 = client.wait(client.register_model(m1, name, input_example=ROWS[:1]), timeout=600)
    assert (v1["number"], v1["status"], v1["approval"]) == (1, "ready", "pending")
    with pytest.raises(PortalError) as refused:  # approval is required
        client.deploy(name, name, 1, runtime="process")
    assert refused.value.status == 409, refused.value
    with pytest.raises(PortalError) as own:  # the uploader's token has no approve scope
        client.approve(name, 1, "mine")
    assert own.value.status == 403
    assert reviewer.approve(name, 1, "looks fine")["approval"] == "approved"
    client.set_registered_model_alias(name, "production", 1)
    assert client.resolve(f"portal:/{name}@production")["number"] == 1
    assert (
        client.get_model_version_by_alias(name, "production")["artifact_sha256"]
        == (v1["artifact_sha256"])
    )
    assert client.resolve(f"portal:/{name}/1")["number"] == 1

    client.deploy(name, name, 1, replicas=1, runtime="process")
    running = client.wait(name)
    assert (running["state"], running["version"]) == ("running", 1)
    key = client.create_api_key("client-test", deployments=[name])
    expected = _expected(m1)
    portal = client.predict(name, ROWS, api_key=key)
    assert np.allclose(portal["predictions"], expected), portal
    v1_dialect = client.predict(name, ROWS, dialect="v1", api_key=key)
    assert np.allclose(v1_dialect["predictions"], expected)
    mlflow = client.predict(name, ROWS, dialect="mlflow", api_key=key)
    assert np.allclose(mlflow["predictions"], expected)

    # v2, approved, then update and roll back
    v2 = client.wait(client.register_model(m2, name, input_example=ROWS[:1]))
    assert v2["number"] == 2
    reviewer.approve(name, 2, "ok")
    assert client.update(name, 2, wait=True)["version"] == 2
    assert np.allclose(client.predict(name, ROWS, api_key=key)["predictions"], _expected(m2))
    back = client.rollback(name, wait=True)
    assert back["version"] == 1
    assert np.allclose(client.predict(name, ROWS, api_key=key)["predictions"], expected)

    target = client.download(name, 1, tmp_path / "v1.joblib")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == v1["artifact_sha256"]
    with pytest.raises(PortalError) as missing:
        client.get_model_version(name, 9)
    assert missing.value.status == 404
    # The token's owner is the actor of what it did.
    approvals = AuditEvent.objects.filter(
        action="model_version.approved", target_name__contains=name
    )
    assert set(approvals.values_list("actor_name", flat=True)) == {approver.username}


def _cli(args: list[str], env: dict[str, str], stdin: str | None = None):
    return subprocess.run(
        [str(Path(sys.executable).with_name("portal")), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_cli_registers_lists_shows_deploys_and_predicts(
    portal_env, make_user, cleanup_deployments, manifest, tmp_path
):
    entry = manifest["house_price_linreg.pkl"]
    user = make_user("deployer")
    token = _token(user, ["upload", "deploy"])
    name = f"cli-{uuid.uuid4().hex[:6]}"
    cleanup_deployments.append(name)
    env = {**os.environ, "PORTAL_URL": portal_env, "PORTAL_TOKEN": token}
    env.pop("PORTAL_API_KEY", None)

    example = json.dumps(entry["input_example"])
    fixture = str(FIXTURE_DIR / "house_price_linreg.pkl")
    register = _cli(
        ["-o", "json", "models", "register", name, fixture, "--input-example", example], env
    )
    assert register.returncode == 0, register.stderr
    assert json.loads(register.stdout)["status"] == "ready"
    assert f"{name} v1: ready" in register.stderr  # progress goes to stderr

    listed = _cli(["models", "list"], env)
    assert listed.returncode == 0 and name in listed.stdout
    shown = _cli(["-o", "json", "models", "show", name, "1"], env)
    assert json.loads(shown.stdout)["estimator_class"].endswith("LinearRegression")
    assert _cli(["models", "show", name, "7"], env).returncode == 2  # not found

    deployed = _cli(["deploy", name, f"portal:/{name}/1", "--runtime", "process"], env)
    assert deployed.returncode == 0, deployed.stderr
    assert "running" in deployed.stdout
    status = _cli(["-o", "json", "status", name], env)
    assert json.loads(status.stdout)["state"] == "running"
    assert _cli(["status", "no-such-deployment"], env).returncode == 2

    client = PortalClient(portal_env, token, progress=True)
    key = client.create_api_key("cli", deployments=[name])
    predicted = _cli(
        ["-o", "json", "predict", name, "--json", example, "--api-key-stdin"], env, stdin=key + "\n"
    )
    assert predicted.returncode == 0, predicted.stderr
    assert np.allclose(json.loads(predicted.stdout)["predictions"], entry["expected_predict"])
    bundle = _cli(["bundle", name, "1", "-o", str(tmp_path / "b.tar.gz")], env)
    assert bundle.returncode == 0, bundle.stderr
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        assert f"{name}-v1/manifest.json" in tar.getnames()
    logs = _cli(["logs", name], env)
    assert logs.returncode == 0 and "running" in logs.stdout

    # stable exit codes: usage 1, refused 3, unavailable 4; the token is never printed
    assert _cli(["predict", name, "--json", "{not json"], env).returncode == 1
    assert _cli(["deploy", name, name], env).returncode == 1  # no version
    read_only = {**env, "PORTAL_TOKEN": _token(user, ["read"])}
    refused = _cli(["models", "register", name, fixture], read_only)
    assert refused.returncode == 3, refused.stderr
    stdin_token = _cli(["--token-stdin", "models", "list"], {**env, "PORTAL_TOKEN": ""}, token)
    assert stdin_token.returncode == 0 and name in stdin_token.stdout
    down = _cli(["status"], {**env, "PORTAL_URL": "http://127.0.0.1:9"})
    assert down.returncode == 4
    for result in (register, listed, deployed, status, predicted, logs, refused, down):
        assert token not in result.stdout + result.stderr
