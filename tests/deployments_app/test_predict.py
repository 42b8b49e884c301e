"""The prediction API against real model containers.

Two real images (house-price on scikit-learn 1.5.2, spam on 1.9.1) are built and started once
for the module with the docker runtime; each test writes the rows that describe them (model,
version from the real validation outcome, deployment, replicas) and calls the portal.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import shutil
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path

import httpx
import numpy as np
import pytest
from django.conf import settings as dj_settings
from django.utils import timezone

from deployments_app.models import ApiKey, Deployment, PredictionLog, Replica
from deployments_app.predict import keys, logwriter, proxy
from deployments_app.runtimes import replica_token
from deployments_app.runtimes.base import BuildSpec, ReplicaLimits, probe_health
from deployments_app.services import SERVER_DIR
from models_app.models import ModelVersion, RegisteredModel
from models_app.validation.pipeline import validate_artifact
from portal.audit import Actor
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR, wait_for
from tests.services import require

pytestmark = [pytest.mark.docker, pytest.mark.slow]
# The portal's secret in these tests and in the production server some of them start: the
# replicas' token derives from it, so every proxy here must share it.
SECRET = "test-" + "x" * 50


@pytest.fixture(autouse=True)
def _shared_secret(settings):
    settings.SECRET_KEY = SECRET


MODELS = {"house": "house_price_linreg.pkl", "spam": "spam_pipeline.joblib"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, django_db_blocker):
    """Validate, build and start each model once: {alias: (outcome, [(name, endpoint)])}."""
    with serve_models(MODELS, tmp_path_factory) as found:
        yield found


@contextlib.contextmanager
def serve_models(models: dict[str, str], tmp_path_factory):
    """Two replicas of each fixture file in `models` ({alias: filename}), as `served` needs."""
    from django.conf import settings

    try:
        from deployments_app.runtimes.docker_runtime import DockerRuntime

        # With the portal's key: replicas require the token only the proxy sends.
        runtime = DockerRuntime(
            state_root=tmp_path_factory.mktemp("served-sockets"),
            token_key=SECRET,
            instance=settings.PORTAL_INSTANCE,  # this run's name: no other portal removes them
        )
        ok = runtime.ping()
    except Exception:  # noqa: BLE001
        ok = False
    require(ok, "a Docker engine")
    manifest = {e["file"]: e for e in json.loads((FIXTURE_DIR / "manifest.json").read_text())}
    work = tmp_path_factory.mktemp("served")
    served, started, images = {}, [], []
    try:
        for alias, filename in models.items():
            path = work / filename
            shutil.copy(FIXTURE_DIR / filename, path)
            outcome = validate_artifact(path=path, example_rows=manifest[filename]["input_example"])
            assert outcome.ok, outcome.reason
            deployment = f"ptest-{alias}"
            spec = BuildSpec(
                deployment=deployment,
                model=f"ptest-{alias}",
                version=1,
                artifact_path=path,
                artifact_sha256="0" * 64,
                fmt=outcome.format,
                requirements=outcome.requirements,
                base_image=settings.PORTAL_BASE_IMAGE,
                wheelhouse=Path(settings.PORTAL_WHEELHOUSE),
                server_dir=SERVER_DIR,
                columns=outcome.schema.get("columns"),
                extra_labels={"portal.test": "1"},
            )
            build = runtime.build(spec, log=lambda _line: None)
            images.append(build.ref)
            replicas = []
            for index in range(2):
                status = runtime.start_replica(
                    deployment=deployment,
                    index=index,
                    build=build,
                    spec=spec,
                    limits=ReplicaLimits(),
                    publish_host="127.0.0.1",
                )
                started.append(status.name)
                assert runtime.wait_healthy(status, timeout=90)
                replicas.append((status.name, status.endpoint))
            served[alias] = (outcome, replicas, manifest[filename])
        yield served, runtime
    finally:
        for name in started:
            runtime.remove_replica(name)
        for ref in images:
            runtime.remove_image(ref)


@pytest.fixture(params=["django", "asgi-lane"])
def client(request, client):
    """Every prediction case through both lanes: Django's stack (the pipeline's blocking
    driver, as portal.wsgi serves it) and the asynchronous lane (portal.asgi, what runportal
    serves)."""
    if request.param == "django":
        yield client
        return
    from tests.conftest import AsgiLaneClient

    # The lane works from other threads and its own connection, as in production: it needs
    # committed rows (a transactional test) and must not leave connections open.
    request.node.add_marker(pytest.mark.django_db(transaction=True))
    request.getfixturevalue("asgi_lane_connections")
    lane = AsgiLaneClient()
    yield lane
    lane.close()


@pytest.fixture
def world(served, db):
    """The database rows for the served models, fresh for each test."""
    proxy._targets.clear()
    data, runtime = served
    rows = {}
    for alias, (outcome, replicas, entry) in data.items():
        model = RegisteredModel.objects.create(name=f"ptest-{alias}")
        version = ModelVersion.objects.create(
            model=model,
            number=1,
            status="ready",
            artifact_sha256=f"{len(rows):064d}",
            artifact_size=1,
            format=outcome.format,
            sklearn_version=outcome.sklearn_version,
            python_requirements=outcome.requirements,
            schema=outcome.schema,
        )
        deployment = Deployment.objects.create(
            name=f"ptest-{alias}",
            model=model,
            version=version,
            runtime="docker",
            state="running",
            replicas=2,
        )
        for index, (name, endpoint) in enumerate(replicas):
            Replica.objects.create(
                deployment=deployment,
                name=name,
                index=index,
                version_number=1,
                endpoint=endpoint,
                healthy=True,
                state="running",
            )
        rows[alias] = (deployment, entry)
    rows["runtime"] = runtime
    return rows


@pytest.fixture
def key_for(make_user):
    def _key(*deployments: Deployment, model=None, **kwargs) -> str:
        user = make_user("deployer")
        _, raw = keys.api_key_create(
            user=user,
            actor=Actor.system(),
            name="test",
            deployment_names=[d.name for d in deployments],
            model_name=model.name if model else "",
            **kwargs,
        )
        return raw

    return _key


def _post(client, name, body, key=None, **extra):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    return client.post(
        f"/api/v1/deployments/{name}/predict",
        data=body if isinstance(body, str | bytes) else json.dumps(body),
        content_type=extra.pop("content_type", "application/json"),
        **headers,
        **extra,
    )


# --------------------------------------------------------------------------- formats


def test_seed_style_features_answers_a_price_near_558000(client, world, key_for):
    deployment, _ = world["house"]
    response = _post(client, deployment.name, {"features": [1500, 3, 2]}, key_for(deployment))
    assert response.status_code == HTTPStatus.OK, response.content
    body = response.json()
    assert body["prediction"] == pytest.approx(558408.111544802)
    assert response["X-Model-Version"] == "1"
    assert response["X-Request-ID"] == body["request_id"]


@pytest.mark.parametrize(
    "body",
    [
        {"instances": [[1500, 3, 2], [2500, 4, 3]]},
        {"inputs": [[1500, 3, 2], [2500, 4, 3]]},
        {"dataframe_split": {"data": [[1500, 3, 2], [2500, 4, 3]]}},
    ],
)
def test_house_row_formats(client, world, key_for, body):
    deployment, entry = world["house"]
    response = _post(client, deployment.name, body, key_for(deployment))
    assert response.status_code == HTTPStatus.OK, response.content
    assert np.allclose(response.json()["predictions"], entry["expected_predict"])


@pytest.mark.parametrize(
    "shape",
    [
        "instances-records",
        "bare-records",
        "dataframe_records",
        "dataframe_split",
        "inputs-columns",
        "features-record",
    ],
)
def test_spam_record_formats_and_probabilities(client, world, key_for, shape):
    deployment, entry = world["spam"]
    rows = entry["input_example"]
    records = [dict(zip(entry["columns"], r, strict=True)) for r in rows]
    body = {
        "instances-records": {"instances": records, "params": {"proba": True}},
        "bare-records": records,
        "dataframe_records": {"dataframe_records": records, "params": {"proba": True}},
        "dataframe_split": {
            "dataframe_split": {"columns": entry["columns"], "data": rows},
            "params": {"proba": True},
        },
        "inputs-columns": {
            "inputs": {c: [r[i] for r in rows] for i, c in enumerate(entry["columns"])}
        },
        "features-record": {"features": records[0], "params": {"proba": True}},
    }[shape]
    response = _post(client, deployment.name, body, key_for(deployment))
    assert response.status_code == HTTPStatus.OK, response.content
    answer = response.json()
    expected = (
        entry["expected_predict"][:1] if shape == "features-record" else entry["expected_predict"]
    )
    assert answer["predictions"] == expected
    if "probabilities" in answer:
        proba = entry["expected_predict_proba"][: len(expected)]
        assert np.allclose(answer["probabilities"], proba)
    if shape == "features-record":
        assert answer["probabilities"][0][1] > 0.9  # "This is a spam email." is spam


def test_open_inference_protocol(client, world, key_for):
    deployment, entry = world["spam"]
    key = key_for(deployment)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    meta = client.get(f"/v2/models/{deployment.name}", **auth)
    assert meta.status_code == HTTPStatus.OK
    assert [i["name"] for i in meta.json()["inputs"]] == entry["columns"]
    assert client.get(f"/v2/models/{deployment.name}/ready", **auth).json()["ready"] is True
    assert client.get("/v2/health/ready").status_code == HTTPStatus.OK
    rows = entry["input_example"]
    body = {
        "id": "req-1",
        "inputs": [
            {"name": c, "shape": [len(rows), 1], "datatype": "BYTES", "data": [r[i] for r in rows]}
            for i, c in enumerate(entry["columns"])
        ],
        "parameters": {"proba": True},
    }
    response = client.post(
        f"/v2/models/{deployment.name}/infer",
        data=json.dumps(body),
        content_type="application/json",
        **auth,
    )
    assert response.status_code == HTTPStatus.OK, response.content
    answer = response.json()
    assert answer["id"] == "req-1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["predict"]["data"] == entry["expected_predict"]
    assert outputs["predict_proba"]["shape"] == [2, 2]
    house, house_entry = world["house"]
    tensor = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [2, 3],
                "datatype": "FP64",
                "data": [v for r in house_entry["input_example"] for v in r],
            }
        ]
    }
    response = client.post(
        f"/v2/models/{house.name}/infer",
        data=json.dumps(tensor),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key_for(house)}",
    )
    assert np.allclose(response.json()["outputs"][0]["data"], house_entry["expected_predict"])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"features": [1500, 3]}, 422, "expected 3 features"),
        ({"instances": [[1500, "three", 2]]}, 422, "expected a number"),
        ({"instances": [[1500, float("nan"), 2]]}, 422, "non-finite"),
        ({"instances": []}, 422, "no rows"),
        ({"instances": [[1, 2, 3]] * 1001}, 413, "at most 1000 rows"),
        ({"nothing": 1}, 400, "no input found"),
        ("{not json", 400, "malformed JSON"),
        ({"instances": [{"area": 1}]}, 422, "positional features"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client, world, key_for, body, status, fragment):
    deployment, _ = world["house"]
    if isinstance(body, dict):
        body = json.dumps(body, allow_nan=True)
    response = _post(client, deployment.name, body, key_for(deployment))
    assert response.status_code == status, response.content
    assert fragment in response.json()["error"]


def test_error_names_row_and_field(client, world, key_for):
    deployment, _ = world["spam"]
    response = _post(
        client,
        deployment.name,
        {"instances": [{"content": "hi", "sender": "a@b.c"}, {"content": 5, "sender": "a@b.c"}]},
        key_for(deployment),
    )
    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert response.json()["row"] == 1 and response.json()["field"] == "content"


def test_wrong_content_type_and_size_and_method(client, world, key_for, settings):
    deployment, _ = world["house"]
    key = key_for(deployment)
    assert (
        _post(client, deployment.name, "features=1", key, content_type="text/plain").status_code
        == HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    )
    settings.PORTAL_PREDICT_MAX_BODY_BYTES = 100
    big = {"instances": [[1500, 3, 2]] * 50}
    assert _post(client, deployment.name, big, key).status_code == (
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    )
    assert client.get(f"/api/v1/deployments/{deployment.name}/predict").status_code == (
        HTTPStatus.METHOD_NOT_ALLOWED
    )


def test_not_running_answers_503_with_state(client, world, key_for):
    deployment, _ = world["house"]
    Deployment.objects.filter(pk=deployment.pk).update(state="stopped")
    response = _post(client, deployment.name, {"features": [1, 2, 3]}, key_for(deployment))
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["state"] == "stopped"


# --------------------------------------------------------------------------- who may call
@pytest.mark.security
def test_key_scoping_expiry_revocation(client, world, key_for):
    house, _ = world["house"]
    spam, _ = world["spam"]
    key = key_for(house)
    assert _post(client, house.name, {"features": [1, 2, 3]}, key).status_code == 200
    other = _post(client, spam.name, {"features": ["x", "y"]}, key)
    missing = _post(client, "no-such-deployment", {"features": [1]}, key)
    assert other.status_code == missing.status_code == HTTPStatus.NOT_FOUND
    assert other.json()["error"].replace(spam.name, "X") == missing.json()["error"].replace(
        "no-such-deployment", "X"
    )
    model_key = key_for(model=spam.model)
    assert _post(client, spam.name, {"instances": [["a", "b"]]}, model_key).status_code == 200
    assert _post(client, "", {}, None).status_code in (404, 401)
    assert _post(client, house.name, {"features": [1, 2, 3]}, None).status_code == 401
    assert _post(client, house.name, {"features": [1, 2, 3]}, "mp_nope_nope").status_code == 401
    # revoke: refused at once, even though checks are cached
    row = ApiKey.objects.get(prefix=key.split("_")[1])
    keys.api_key_revoke(key=row, actor=Actor.system())
    assert _post(client, house.name, {"features": [1, 2, 3]}, key).status_code == 401
    assert AuditEvent.objects.filter(action="api_key.revoked").exists()
    # expiry
    soon = key_for(house, expires_at=timezone.now() + timedelta(seconds=60))
    assert _post(client, house.name, {"features": [1, 2, 3]}, soon).status_code == 200
    ApiKey.objects.filter(prefix=soon.split("_")[1]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    from django.core.cache import cache

    cache.delete(f"portal:apikey:{soon.split('_')[1]}")
    keys.forget_local(soon.split("_")[1])  # other processes: within keys.LOCAL_SECONDS
    assert _post(client, house.name, {"features": [1, 2, 3]}, soon).status_code == 401
    assert ApiKey.objects.get(prefix=row.prefix).last_used_at is not None


@pytest.mark.security
def test_rate_limit_answers_429_with_retry_after(client, world, key_for):
    house, _ = world["house"]
    key = key_for(house, rate_limit_per_minute=3)
    codes = [_post(client, house.name, {"features": [1, 2, 3]}, key).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200]
    assert codes[3:] == [429, 429]
    limited = _post(client, house.name, {"features": [1, 2, 3]}, key)
    assert 1 <= int(limited["Retry-After"]) <= 60


@pytest.mark.security
def test_rate_limit_under_a_burst_admits_exactly_the_limit():
    """64 threads at once on a fresh window (Redis leases): exactly the limit is admitted.
    Threads that found the budget leased out used to mark the window exhausted while this
    process still held leases, and everyone got 429 after a few dozen calls; later a thread
    answered 429 while another thread's lease was on its way back from Redis (590 of 600)."""
    import threading
    import uuid

    require(bool(keys._redis()), "Redis for the shared rate-limit counters")
    limit = 600
    info = keys.KeyInfo(
        id=0,
        prefix=f"burst{uuid.uuid4().hex[:8]}",
        key_hash="",
        user_id=0,
        username="burst",
        deployment_ids=frozenset(),
        model_id=None,
        expires_at=None,
        revoked=False,
        active_user=True,
        rate_limit_per_minute=limit,
    )
    start = threading.Barrier(64)

    def calls(_):
        start.wait()
        return [keys.rate_limited(info) == 0 for _ in range(20)]

    # Not across a minute boundary: a new window would admit again.
    wait_for(lambda: int(timezone.now().timestamp()) % 60 < 50, timeout=15, what="a fresh window")
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        admitted = sum(sum(batch) for batch in pool.map(calls, range(64)))
    assert admitted == limit  # 1,280 calls
    keys.forget_leases()


@pytest.mark.security
def test_logged_in_deployer_may_call_viewer_may_not(client, world, role_client):
    house, _ = world["house"]
    deployer = role_client("deployer")
    assert _post(deployer, house.name, {"features": [1, 2, 3]}).status_code == 200
    viewer = role_client("viewer")
    assert _post(viewer, house.name, {"features": [1, 2, 3]}).status_code == 403


def test_every_call_is_logged_with_outcome(client, world, key_for):
    house, _ = world["house"]
    key = key_for(house)
    _post(client, house.name, {"features": [1500, 3, 2]}, key)
    _post(client, house.name, {"features": [1500]}, key)
    logs = list(PredictionLog.objects.order_by("id"))
    assert [log.status_code for log in logs] == [200, 422]
    ok, bad = logs
    assert ok.version_number == 1 and ok.rows == 1 and ok.upstream_ms > 0
    assert ok.latency_ms >= ok.upstream_ms and len(ok.input_sha256) == 64
    assert (
        ok.caller
        and ok.api_key_prefix
        and ok.replica.startswith(f"{dj_settings.PORTAL_INSTANCE}-ptest-house")
    )
    assert ok.payload is None  # capture is off by default
    assert "expected 3 features" in bad.error


def test_payload_capture_when_sampling_is_on(client, world, key_for):
    house, _ = world["house"]
    Deployment.objects.filter(pk=house.pk).update(capture_percent=100)
    _post(client, house.name, {"features": [1500, 3, 2]}, key_for(house))
    # The record under the default policy (v0: inputs and outputs, every field kept).
    assert PredictionLog.objects.get().payload == {
        "policy": 0,
        "columns": ["/0", "/1", "/2"],
        "inputs": [[1500, 3, 2]],
        "outputs": {"predictions": [pytest.approx(558408.11, rel=1e-6)]},
    }


def test_metrics_are_exposed_to_loopback_only(client, world, key_for, settings):
    house, _ = world["house"]
    _post(client, house.name, {"features": [1500, 3, 2]}, key_for(house))
    text = client.get("/metrics").content.decode()
    assert 'portal_predictions_total{deployment="ptest-house",status="200",version="1"}' in text
    settings.PORTAL_METRICS_ALLOW = []
    assert client.get("/metrics").status_code == HTTPStatus.FORBIDDEN


# --------------------------------------------------------------------------- forwarding


# --------------------------------------------------------------------------- faults and load
@pytest.mark.security
def test_cache_outage_answers_503_not_500(client, world, key_for, settings):
    house, _ = world["house"]
    key = key_for(house)
    # A real Redis client against a port where nothing listens.
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
    response = _post(client, house.name, {"features": [1500, 3, 2]}, key)
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response["Retry-After"] == "5"
    assert "retry" in response.json()["error"]


@pytest.mark.security
def test_database_failure_while_logging_answers_503_not_an_unlogged_200(
    client, world, key_for, monkeypatch
):
    from django.db import OperationalError

    house, _ = world["house"]
    key = key_for(house)

    def broken(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(logwriter, "params", broken)  # every lane builds its INSERT with it
    response = _post(client, house.name, {"features": [1500, 3, 2]}, key)
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE


@pytest.mark.security
def test_a_hanging_replica_is_bypassed_and_all_hanging_times_out(client, world, key_for, settings):
    import time

    import docker

    house, _ = world["house"]
    key = key_for(house)
    settings.PORTAL_PREDICT_READ_TIMEOUT = 1.0
    proxy.reset_pools()  # rebuild the pools with the short timeout
    containers = [
        docker.from_env().containers.get(r.name)
        for r in Replica.objects.filter(deployment=house).order_by("index")
    ]

    def timed_calls(n):
        codes, slowest = [], 0.0
        for _ in range(n):
            started = time.monotonic()
            codes.append(_post(client, house.name, {"features": [1500, 3, 2]}, key).status_code)
            slowest = max(slowest, time.monotonic() - started)
        return codes, slowest

    containers[0].pause()  # accepts connections, never answers
    try:
        codes, slowest = timed_calls(4)
        assert codes == [200] * 4  # the other replica answers after a 1 s timeout
        assert slowest < 5
        containers[1].pause()
        codes, slowest = timed_calls(2)
        assert codes == [HTTPStatus.GATEWAY_TIMEOUT] * 2
        assert slowest < 5  # bounded: one timeout per replica, never a hang
    finally:
        for c in containers:
            c.reload()
            if c.status == "paused":
                c.unpause()
        proxy.reset_pools()
    assert PredictionLog.objects.filter(status_code=504).count() == 2


@pytest.mark.security
@pytest.mark.django_db(transaction=True)
def test_bounded_load_two_replicas_zero_5xx_and_every_answer_logged(live_server, world, key_for):
    house, _ = world["house"]
    key = key_for(house)
    url = f"{live_server.url}/api/v1/deployments/{house.name}/predict"
    total = 2000

    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32)) as http:

        def call(i):
            return http.post(
                url,
                json={"features": [1000 + i % 500, 3, 2]},
                headers={"Authorization": f"Bearer {key}"},
            ).status_code

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(call, range(total)))
    assert codes.count(200) == total, {c: codes.count(c) for c in set(codes)}
    assert PredictionLog.objects.filter(status_code=200).count() == total
    replicas = set(PredictionLog.objects.values_list("replica", flat=True))
    assert len(replicas) == 2  # round robin used both


@pytest.mark.security
@pytest.mark.django_db(transaction=True)
def test_failover_when_a_replica_is_killed_and_burst_is_fully_logged(live_server, world, key_for):
    house, _ = world["house"]
    key = key_for(house)
    url = f"{live_server.url}/api/v1/deployments/{house.name}/predict"
    victim = Replica.objects.filter(deployment=house).order_by("index").first()
    killed_name = victim.name

    def call(_):
        return httpx.post(
            url,
            json={"features": [1500, 3, 2]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = list(pool.map(call, range(40)))
        _kill_container(killed_name)  # docker kill: connections to it are refused
        second = list(pool.map(call, range(40)))
    assert first.count(200) == 40
    assert second.count(200) == 40, second  # the other replica took every call
    assert PredictionLog.objects.count() == 80
    assert PredictionLog.objects.filter(status_code=200).count() == 80


def _kill_container(name: str) -> None:
    import docker

    docker.from_env().containers.get(name).kill()


# --------------------------------------------------------------------------- the lanes


@pytest.mark.security
@pytest.mark.django_db(transaction=True)  # the asynchronous lane reads from other threads
def test_asgi_lane_answers_like_django(world, key_for, asgi_lane_connections):
    """Same status, body shape and headers (security headers, request id, model headers) on
    Django's stack and the asynchronous lane; a foreign Host is refused by Django's rules,
    and a call without a key is always Django's."""
    from django.test import Client

    from tests.conftest import AsgiLaneClient

    house, _ = world["house"]
    key = key_for(house)
    asgi = AsgiLaneClient()
    try:
        answers = {}
        for lane, c in (("django", Client()), ("asgi", asgi)):
            response = _post(
                c, house.name, {"features": [1500, 3, 2]}, key, HTTP_X_REQUEST_ID="abcd1234"
            )
            assert response.status_code == 200, (lane, response.content)
            assert getattr(response, "lane", "django") == lane
            answers[lane] = response
        skip = {"content-length", "date", "server"}
        headers = {
            lane: {k.lower(): v for k, v in r.headers.items() if k.lower() not in skip}
            for lane, r in answers.items()
        }
        assert headers["django"] == headers["asgi"]
        assert headers["asgi"]["x-request-id"] == "abcd1234"
        assert headers["asgi"]["x-content-type-options"] == "nosniff"
        assert headers["asgi"]["x-frame-options"] == "DENY"
        assert answers["asgi"].json() == answers["django"].json()
        assert PredictionLog.objects.filter(request_id="abcd1234").count() == 2

        for lane in (asgi,):
            bad_host = _post(
                lane, house.name, {"features": [1, 2, 3]}, key, HTTP_HOST="evil.example"
            )
            assert bad_host.status_code == 400 and not hasattr(bad_host, "lane")
            # No key: not for the lane; Django answers (401), and with a session, CSRF applies.
            anonymous = _post(lane, house.name, {"features": [1, 2, 3]})
            assert anonymous.status_code == 401 and not hasattr(anonymous, "lane")
    finally:
        asgi.close()


@pytest.mark.django_db(transaction=True)  # the threads commit on their own connections
def test_group_commit_writes_concurrent_rows_in_shared_inserts():
    """Threads logging at once share INSERTs, and each returns only once its row is in."""
    import threading

    from django.db import connection

    from deployments_app.predict.logwriter import GroupCommit

    writer = GroupCommit()
    gate = threading.Barrier(12)
    errors = []

    def one(i):
        try:
            gate.wait()
            writer.write(_log_row(f"gc-{i}"))
            # Back from write: the row must be visible from another connection already.
            assert PredictionLog.objects.filter(request_id=f"gc-{i}").exists()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert writer.rows == 12 and writer.flushes < 12
    assert PredictionLog.objects.filter(request_id__startswith="gc-").count() == 12


def test_group_commit_failure_fails_every_caller_in_the_batch(monkeypatch):
    from django.db import OperationalError

    from deployments_app.predict import logwriter

    def broken(rows):
        raise OperationalError("connection refused")

    monkeypatch.setattr(logwriter, "_insert", broken)
    writer = logwriter.GroupCommit()
    with pytest.raises(OperationalError):
        writer.write(_log_row("x"))
    assert writer._pending == [] and not writer._flushing


def _log_row(request_id):
    from datetime import UTC, datetime

    return {
        "created_at": datetime.now(UTC),
        "deployment_id": None,
        "deployment_name": "gc",
        "model_name": "",
        "version_number": None,
        "caller": "t",
        "api_key_prefix": "",
        "status_code": 200,
        "latency_ms": 1.0,
        "upstream_ms": 0.5,
        "rows": 1,
        "input_bytes": 2,
        "input_sha256": "",
        "client_ip": "127.0.0.1",
        "request_id": request_id,
        "replica": "",
        "error": "",
        "payload": {"a": [1, 2]},
        "explained": False,
    }


# --------------------------------------------------------------------------- a real outage


@contextlib.contextmanager
def portal_server(tmp_path):
    """The portal as runportal serves it (uvicorn, portal.asgi, two workers), on the test
    database, in production mode; stopped afterwards."""
    import os
    import signal
    import subprocess
    import sys

    from django.db import connection

    from tests.services import free_port, wait_for_port

    port = free_port()
    db = connection.settings_dict
    env = dict(
        os.environ,
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=SECRET,
        PORTAL_AUDIT_KEY="test-audit-" + "y" * 32,
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        PORTAL_ARTIFACT_KEY_FILE=str(dj_settings.PORTAL_ARTIFACT_KEY_FILE),  # opens our store
        DJANGO_SECURE_SSL_REDIRECT="false",
        DATABASE_URL=f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        PORTAL_DATA_DIR=str(tmp_path / "var"),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "portal.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--port", str(port),
         "--workers", "2", "--loop", "uvloop", "--http", "httptools", "--no-access-log"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.security
@pytest.mark.django_db(transaction=True)
def test_asgi_lane_under_load_two_replicas_zero_5xx_and_every_answer_logged(
    tmp_path, world, key_for
):
    """The server runportal starts (uvicorn, the asynchronous lane with its own PostgreSQL
    writer and worker-thread hops): 2,000 calls at concurrency 32 over two replicas, every
    one 200, every answer's row committed (matched by request id), every live replica used."""
    house, _ = world["house"]
    key = key_for(house)
    total = 2000
    with (
        portal_server(tmp_path) as base,
        httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32)) as http,
    ):
        url = f"{base}/api/v1/deployments/{house.name}/predict"

        def call(i):
            r = http.post(
                url,
                json={"features": [1000 + i % 500, 3, 2]},
                headers={"Authorization": f"Bearer {key}", "X-Request-ID": f"asgi-load-{i:05d}"},
            )
            return r.status_code, r.headers.get("x-request-id")

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(call, range(total)))
    codes = [code for code, _ in answers]
    assert codes.count(200) == total, {c: codes.count(c) for c in set(codes)}
    logged = set(PredictionLog.objects.filter(status_code=200).values_list("request_id", flat=True))
    assert {rid for _, rid in answers} == logged
    # Round robin over every replica still alive (the failover test may have killed one).
    alive = set()
    for replica in Replica.objects.filter(deployment=house):
        if probe_health(replica.endpoint, timeout=2, token=replica_token(house.name)):
            alive.add(replica.name)
    assert alive and set(PredictionLog.objects.values_list("replica", flat=True)) == alive


def _postgres_cluster() -> tuple[str, str]:
    import subprocess

    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        version, cluster, port, *_ = line.split()
        if port == "5432":
            return version, cluster
    raise AssertionError(f"no PostgreSQL cluster on port 5432: {out.stdout}")


@pytest.mark.security
@pytest.mark.django_db(transaction=True)
def test_postgres_down_while_predictions_flow_503_then_recovery(tmp_path, world, key_for):
    """The machine's PostgreSQL is stopped for a few seconds while a client keeps calling
    the portal (as runportal serves it: uvicorn, the asynchronous lane): answers are 200 or
    a clear 503, never a 500 or a hang; once it is back the portal answers 200 again without
    a restart, and every 200 answered has its log row (matched by request id)."""
    import os
    import shutil
    import subprocess
    import threading
    import time

    from django.db import connection

    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None:
        pytest.skip("stops the machine's PostgreSQL: runs under `make test` (root, pg_ctlcluster)")
    if connection.settings_dict["HOST"] not in ("127.0.0.1", "localhost"):
        pytest.skip("stops the local PostgreSQL; this run's database is elsewhere")
    version, cluster = _postgres_cluster()
    house, _ = world["house"]
    key = key_for(house)
    answers: list[tuple[float, int, str, dict]] = []
    stop = threading.Event()

    with portal_server(tmp_path) as base, httpx.Client(timeout=15) as http:
        url = f"{base}/api/v1/deployments/{house.name}/predict"

        def loop():
            i = 0
            while not stop.is_set():
                i += 1
                rid = f"pgdown-{i:06d}"
                try:
                    r = http.post(
                        url,
                        json={"features": [1500, 3, 2]},
                        headers={"Authorization": f"Bearer {key}", "X-Request-ID": rid},
                    )
                    body = (
                        r.json()
                        if r.headers.get("content-type", "").startswith("application/json")
                        else {}
                    )
                    answers.append(
                        (
                            time.monotonic(),
                            r.status_code,
                            rid,
                            body | {"_retry": r.headers.get("Retry-After")},
                        )
                    )
                except httpx.HTTPError as exc:  # a hang or a reset is a failure too
                    answers.append((time.monotonic(), -1, rid, {"error": repr(exc)}))
                time.sleep(0.02)

        caller = threading.Thread(target=loop)
        caller.start()
        try:
            time.sleep(2)
            connection.close()  # this process's connection dies with the server anyway
            subprocess.run(
                ["pg_ctlcluster", version, cluster, "stop", "-m", "fast"], check=True, timeout=60
            )
            down_at = time.monotonic()
            time.sleep(4)
        finally:
            restart_at = time.monotonic()
            subprocess.run(["pg_ctlcluster", version, cluster, "start"], check=True, timeout=120)
            up_at = time.monotonic()
        wait_for(lambda: answers and answers[-1][1] == 200, timeout=30, what="a 200 after recovery")
        time.sleep(2)
        stop.set()
        caller.join(timeout=30)

    codes = [code for _, code, _, _ in answers]
    assert set(codes) <= {200, 503}, {c: codes.count(c) for c in set(codes)}
    during = [a for a in answers if down_at + 0.5 < a[0] < restart_at]
    assert during and all(code == 503 for _, code, _, _ in during)
    for _, _, _, body in during:
        assert "retry" in body["error"] and body["_retry"] == "5"
    after = [a for a in answers if a[0] > up_at + 1]
    assert after and all(code == 200 for _, code, _, _ in after)
    answered = {rid for _, code, rid, _ in answers if code == 200}
    logged = set(
        PredictionLog.objects.filter(request_id__startswith="pgdown-", status_code=200).values_list(
            "request_id", flat=True
        )
    )
    assert answered <= logged, sorted(answered - logged)[:5]
    assert len(answered) > 50


def test_asgi_lane_keeps_upstream_connections_alive(world, monkeypatch):
    """The lane's HTTP client reuses one keep-alive connection per replica, and a connection
    the replica closed meanwhile is replaced without failing the call."""
    import asyncio
    import concurrent.futures

    from deployments_app.predict import aio

    house, _ = world["house"]
    endpoint = Replica.objects.filter(deployment=house).order_by("index").first().endpoint
    opened = []
    real_open = asyncio.open_unix_connection  # replicas listen on unix sockets

    async def counting(*args, **kwargs):
        opened.append(args)
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(asyncio, "open_unix_connection", counting)
    body = json.dumps({"instances": [[1500, 3, 2]], "params": {"proba": False}}).encode()
    headers = proxy.upstream_headers(house.name)

    async def scenario():
        answers = [await aio.post(endpoint, "/predict", body, headers) for _ in range(20)]
        assert len(opened) == 1  # one connection for twenty calls
        (idle,) = aio._state().idle.values()
        idle[0][1].close()  # as if the replica had closed it while idle
        await asyncio.sleep(0.05)
        answers.append(await aio.post(endpoint, "/predict", body, headers))
        for _reader, writer in idle:
            writer.close()
        return answers

    # On a thread of its own: this thread may have a running loop already (Playwright's).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answers = pool.submit(asyncio.run, scenario()).result(timeout=120)
    assert [status for status, _ in answers] == [200] * 21
    assert json.loads(answers[-1][1])["predictions"][0] == pytest.approx(558408.11, abs=0.01)
    assert len(opened) == 2
