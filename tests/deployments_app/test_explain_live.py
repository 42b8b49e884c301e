"""Explanations through the real proxy and a real docker replica, on every dialect.

One image of the spam pipeline (scikit-learn 1.9.1, text columns content and sender) is built
with the docker runtime and started once for the module, its reference sample being the
version's input example as the portal passes it (MODEL_REFERENCE). Calls go through the
prediction pipeline (Django's blocking driver, and the asynchronous lane for V2) with an API
key; the log rows and the explain rate limit are checked on the real database and Redis.
The try-it form's explain checkbox is driven in Chromium (tests/browser's fixtures).
"""

from __future__ import annotations

import json
import shutil
import time
from http import HTTPStatus
from pathlib import Path

import pytest
from django.conf import settings

from deployments_app.models import Deployment, PredictionLog, Replica
from deployments_app.predict import proxy
from deployments_app.predict.inputs import reference_rows
from deployments_app.runtimes.base import BuildSpec, ReplicaLimits
from deployments_app.services import SERVER_DIR
from models_app.models import ModelVersion, RegisteredModel
from models_app.validation.pipeline import validate_artifact
from tests.browser.conftest import login, page  # noqa: F401 - the fixture by name
from tests.conftest import FIXTURE_DIR, AsgiLaneClient
from tests.deployments_app import test_predict as tp
from tests.services import require

pytestmark = [pytest.mark.docker, pytest.mark.slow]
_shared_secret = tp._shared_secret  # the replicas' token derives from the portal's secret
key_for = tp.key_for
NAME = "xtest-spam"


@pytest.fixture(scope="module")
def replica(tmp_path_factory, django_db_blocker):
    """(validation outcome, manifest entry, (replica name, endpoint)) of one running replica."""
    from deployments_app.runtimes.docker_runtime import DockerRuntime

    runtime = DockerRuntime(
        state_root=tmp_path_factory.mktemp("explain-sockets"),
        token_key=tp.SECRET,
        instance=settings.PORTAL_INSTANCE,
    )
    require(runtime.ping(), "a Docker engine")
    entry = next(
        e for e in json.loads((FIXTURE_DIR / "manifest.json").read_text()) if e["name"] == "spam"
    )
    path = tmp_path_factory.mktemp("explain-model") / entry["file"]
    shutil.copy(FIXTURE_DIR / entry["file"], path)
    outcome = validate_artifact(path=path, example_rows=entry["input_example"])
    assert outcome.ok, outcome.reason
    spec = BuildSpec(
        deployment=NAME,
        model=NAME,
        version=1,
        artifact_path=path,
        artifact_sha256="0" * 64,
        fmt=outcome.format,
        requirements=outcome.requirements,
        base_image=settings.PORTAL_BASE_IMAGE,
        wheelhouse=Path(settings.PORTAL_WHEELHOUSE),
        server_dir=SERVER_DIR,
        columns=outcome.schema.get("columns"),
        reference=reference_rows(outcome.example, outcome.schema),
        extra_labels={"portal.test": "1"},
    )
    assert spec.reference == entry["input_example"]
    build = runtime.build(spec, log=lambda _line: None)
    status = None
    try:
        status = runtime.start_replica(
            deployment=NAME,
            index=0,
            build=build,
            spec=spec,
            limits=ReplicaLimits(),
            publish_host="127.0.0.1",
        )
        assert runtime.wait_healthy(status, timeout=90)
        yield outcome, entry, (status.name, status.endpoint)
    finally:
        if status is not None:
            runtime.remove_replica(status.name)
        runtime.remove_image(build.ref)


@pytest.fixture
def deployment(replica, transactional_db):
    proxy._targets.clear()
    outcome, entry, (name, endpoint) = replica
    model = RegisteredModel.objects.create(name=NAME)
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        status="ready",
        artifact_sha256="0" * 64,
        artifact_size=1,
        format=outcome.format,
        sklearn_version=outcome.sklearn_version,
        python_requirements=outcome.requirements,
        schema=outcome.schema,
        input_example=outcome.example,
    )
    deployment = Deployment.objects.create(
        name=NAME, model=model, version=version, runtime="docker", state="running", replicas=1
    )
    Replica.objects.create(
        deployment=deployment,
        name=name,
        index=0,
        version_number=1,
        endpoint=endpoint,
        healthy=True,
        state="running",
    )
    return deployment, entry


@pytest.fixture
def lane(asgi_lane_connections):
    client = AsgiLaneClient()
    yield client
    client.close()


def _post(client, path: str, body: dict, key: str):
    return client.post(
        path,
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def _check(explanations, explainer, probabilities):
    assert explainer["features"] == ["content", "sender"]
    assert explainer["method"] == "kernel_shap" and explainer["exact"] is True
    for row, probs in zip(explanations, probabilities, strict=True):
        assert list(row["contributions"]) == ["content", "sender"]
        total = row["base_value"] + sum(row["contributions"].values())
        assert total == pytest.approx(max(probs), abs=1e-9)
        assert row["output"] == pytest.approx(max(probs), abs=1e-12)


def _wait_for_a_fresh_minute() -> None:
    """The limit counts per clock minute: start where the whole test fits in one."""
    if time.time() % 60 > 40:
        time.sleep(61 - time.time() % 60)


def test_explain_on_every_dialect_sums_logs_and_has_its_own_rate_limit(
    client, lane, deployment, key_for, settings
):
    deployment, entry = deployment
    settings.PORTAL_EXPLAIN_RATE_PER_MINUTE = 4
    key = key_for(deployment)
    rows = entry["input_example"]
    expected = entry["expected_predict_proba"]
    records = [{"content": c, "sender": s} for c, s in rows]
    _wait_for_a_fresh_minute()

    # The portal's own JSON (Django's blocking driver).
    response = _post(
        client,
        f"/api/v1/deployments/{NAME}/predict",
        {"instances": records, "params": {"explain": True, "proba": True}},
        key,
    )
    assert response.status_code == HTTPStatus.OK, response.content
    body = response.json()
    assert body["predictions"] == entry["expected_predict"]
    _check(body["explanations"], body["explainer"], expected)
    assert [r["class"] for r in body["explanations"]] == entry["expected_predict"]

    # MLflow's scoring protocol: params beside dataframe_split.
    response = _post(
        client,
        f"/api/v1/deployments/{NAME}/invocations",
        {
            "dataframe_split": {"columns": ["content", "sender"], "data": rows},
            "params": {"explain": True},
        },
        key,
    )
    assert response.status_code == HTTPStatus.OK, response.content
    _check(response.json()["explanations"], response.json()["explainer"], expected)

    # Open Inference V2 on the asynchronous lane: request parameters -> response parameters.
    response = _post(
        lane,
        f"/v2/models/{NAME}/infer",
        {
            "inputs": [
                {
                    "name": "content",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": [r[0] for r in rows],
                },
                {"name": "sender", "shape": [2], "datatype": "BYTES", "data": [r[1] for r in rows]},
            ],
            "parameters": {"explain": True},
        },
        key,
    )
    assert response.status_code == HTTPStatus.OK, response.content
    v2 = json.loads(response.content)
    _check(v2["parameters"]["explanations"], v2["parameters"]["explainer"], expected)
    assert {o["name"] for o in v2["outputs"]} >= {"predict"}

    # KServe V1: the fourth explain call of the minute, still allowed.
    response = _post(
        client, f"/v1/models/{NAME}:predict", {"instances": rows, "params": {"explain": True}}, key
    )
    assert response.status_code == HTTPStatus.OK, response.content
    assert "explanations" in response.json()

    # The fifth is refused, by both drivers, with a reason and a wait; plain calls go on.
    for lane_client in (client, lane):
        response = _post(
            lane_client,
            f"/api/v1/deployments/{NAME}/predict",
            {"instances": rows, "params": {"explain": True}},
            key,
        )
        assert response.status_code == HTTPStatus.TOO_MANY_REQUESTS, response.content
        assert "explain rate limit exceeded" in json.loads(response.content)["error"]
        assert "PORTAL_EXPLAIN_RATE_PER_MINUTE" in json.loads(response.content)["error"]
        assert 1 <= int(response["Retry-After"]) <= 60
    response = _post(client, f"/api/v1/deployments/{NAME}/predict", {"instances": rows}, key)
    assert response.status_code == HTTPStatus.OK, response.content
    assert "explanations" not in response.json()

    # Bad explain parameters are the caller's error.
    response = _post(
        client,
        f"/api/v1/deployments/{NAME}/predict",
        {"instances": rows, "params": {"explain": "yes"}},
        key,
    )
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "'explain' must be true or false" in response.json()["error"]

    # The log: every explain call marked, refused ones included; the plain call not.
    logs = list(PredictionLog.objects.filter(deployment_name=NAME).order_by("created_at"))
    plain = [r.upstream_ms for r in logs if r.status_code == 200 and not r.explained]
    explained = [r.upstream_ms for r in logs if r.status_code == 200 and r.explained]
    print(f"replica time: plain {plain} ms, explained {[round(v, 1) for v in explained]} ms")
    assert [(r.status_code, r.explained) for r in logs] == [
        (200, True),
        (200, True),
        (200, True),
        (200, True),
        (429, True),
        (429, True),
        (200, False),
        (400, False),
    ]


def test_try_it_explain_checkbox_draws_each_features_contribution(
    page,  # noqa: F811 - the browser fixture imported above
    deployment,
    make_user,
):
    deployment, entry = deployment
    user = make_user("deployer")
    login(page, user)
    page.goto(f"/deployments/{NAME}/")
    assert json.loads(page.locator("#try-body").input_value()) == {
        "instances": entry["input_example"]
    }
    page.check("#try-explain")
    page.click("#try-send")
    page.wait_for_selector("#try-explanations:not([hidden]) table")
    assert page.locator("#try-status").inner_text().startswith("HTTP 200")
    tables = page.locator("#try-explanations table")
    assert tables.count() == 2  # one per row
    first = tables.nth(0).inner_text()
    assert "content" in first and "sender" in first and "class 1" in first
    answer = json.loads(page.locator("#try-answer").inner_text())
    assert [r["class"] for r in answer["explanations"]] == entry["expected_predict"]
    log = PredictionLog.objects.get(deployment_name=NAME)
    assert (log.caller, log.status_code, log.explained) == (user.username, 200, True)
    # Unchecked: a plain call, nothing drawn.
    page.uncheck("#try-explain")
    page.click("#try-send")
    page.wait_for_function("document.getElementById('try-explanations').hidden")
    assert not page.js_errors
