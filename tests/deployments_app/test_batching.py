"""Adaptive batching in the model server (deployments_app/model_server/server.py, ``Batcher``).

Two layers: the ASGI app in-process with a RandomForest trained here (requests gathered on
one event loop queue before the batcher runs, so the batches are deterministic), and the
real server process over a unix socket with a token, serving the house model in its own
old environment (scikit-learn 1.5.2, numpy 1.26) to concurrent threads. Every batched
answer must equal the unbatched one exactly, errors included.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from argparse import Namespace
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from deployments_app.runtimes.base import (
    SERVER_REQUIREMENTS,
    TOKEN_HEADER,
    BuildSpec,
    ReplicaLimits,
    replica_request,
)
from deployments_app.runtimes.registry import get_runtime

REPO = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO / "deployments_app" / "model_server"
LOADER = REPO / "models_app" / "validation" / "safe_load.py"
FIXTURES = Path("/work/shared/fixtures/models")
# The cached server environment of the house model's pins (scikit-learn 1.5.2, numpy 1.26).
ENV_CACHE = Path(os.environ.get("PORTAL_ENV_CACHE", "/opt/model-portal/envs"))
START_TIMEOUT = 60


def _server_module():
    spec = importlib.util.spec_from_file_location("batching_server", SERVER_DIR / "server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _old_env_python() -> Path | None:
    for requirements in sorted((ENV_CACHE / "servers").glob("rt-*/requirements.txt")):
        pins = requirements.read_text()
        if "scikit-learn==1.5.2" in pins and "numpy==1.26" in pins and "uvicorn==" in pins:
            return requirements.parent / "bin" / "python"
    return None


# --------------------------------------------------------------------------
# runtime plumbing
# --------------------------------------------------------------------------


def test_replica_limits_pass_batching_to_the_server_only_when_on():
    assert ReplicaLimits().server_env() == {}
    assert ReplicaLimits().batching() == "off"
    assert ReplicaLimits(batch_max_size=1, batch_max_wait_ms=5).server_env() == {}
    on = ReplicaLimits(batch_max_size=64, batch_max_wait_ms=2)
    assert on.server_env() == {"MODEL_BATCH_MAX_SIZE": "64", "MODEL_BATCH_MAX_WAIT_MS": "2.0"}
    assert on.batching() == "64/2.0"


def test_server_reads_batching_from_the_environment(monkeypatch):
    server = _server_module()
    assert server.parse_config([]).batch_max_size == 0
    monkeypatch.setenv("MODEL_BATCH_MAX_SIZE", "32")
    monkeypatch.setenv("MODEL_BATCH_MAX_WAIT_MS", "1.5")
    cfg = server.parse_config([])
    assert (cfg.batch_max_size, cfg.batch_max_wait_ms) == (32, 1.5)
    assert server.parse_config(["--batch-max-size", "0"]).batch_max_size == 0


# --------------------------------------------------------------------------
# in-process: the ASGI app with a RandomForest on named columns
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forest():
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_iris(return_X_y=True, as_frame=True)
    model = RandomForestClassifier(n_estimators=30, random_state=0).fit(x, y)
    assert isinstance(x, pd.DataFrame)  # fitted with names: the server builds DataFrames
    return model, list(x.columns), x.to_numpy().tolist()


def _app(server, model, max_size: int = 0, max_wait_ms: float = 0.0):
    cfg = Namespace(max_body_bytes=1 << 20, token_file=None)
    cfg.batch_max_size, cfg.batch_max_wait_ms = max_size, max_wait_ms
    return server.App(server.ModelState(model, "iris", 1), cfg=cfg)


def _asgi_many(app, calls: list[tuple[str, str, bytes]]) -> list[tuple[int, dict]]:
    """All calls at once on one event loop: they queue before the batcher's first turn."""

    async def one(method: str, path: str, body: bytes):
        sent: list[dict] = []
        scope = {"type": "http", "method": method, "path": path, "headers": [], "client": ("t", 1)}

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    async def everything():
        return await asyncio.gather(*(one(*call) for call in calls))

    # A thread of its own: another test may leave an event loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, everything()).result()


def _one_by_one(app, calls):
    return [_asgi_many(app, [call])[0] for call in calls]


def _predict(instances, proba: bool = False) -> tuple[str, str, bytes]:
    payload: dict = {"instances": instances}
    if proba:
        payload["params"] = {"proba": True}
    return "POST", "/predict", json.dumps(payload).encode()


def _infer(rows: list[list[float]]) -> tuple[str, str, bytes]:
    data = [v for row in rows for v in row]
    tensor = {"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64"}
    payload = {"inputs": [{**tensor, "data": data}], "outputs": [{"name": "predict_proba"}]}
    return "POST", "/v2/models/iris/infer", json.dumps(payload).encode()


def test_batched_answers_equal_unbatched_and_a_failing_request_fails_alone(forest):
    server = _server_module()
    model, columns, rows = forest
    calls = [
        _predict(rows[0:2]),
        _predict(rows[50:51], proba=True),
        _predict([[5.0, 3.0, float("inf"), 1.0]]),  # fails in predict: the batch is rerun
        _predict([dict(zip(columns, row, strict=True)) for row in rows[100:103]], proba=True),
        _predict([[1.0, 2.0]]),  # wrong feature count: refused before batching
        _predict([[1.0, "abc", 2.0, 3.0]]),  # not a number: refused before batching
        _infer(rows[60:62]),
        _predict(rows[149:150]),
    ]
    expected = _one_by_one(_app(server, model), calls)
    app = _app(server, model, max_size=64)
    assert _asgi_many(app, calls) == expected

    statuses = [status for status, _ in expected]
    assert statuses == [200, 200, 500, 200, 400, 400, 200, 200]
    assert "infinity" in expected[2][1]["error"]
    assert [("probabilities" in body) for _, body in expected] == [
        False, True, False, True, False, False, False, False,
    ]  # fmt: skip
    assert len(expected[3][1]["probabilities"]) == 3
    # The six valid inputs went into one predict call, which raised and was rerun one by one.
    stats = _asgi_many(app, [("GET", "/health", b"")])[0][1]["batching"]
    assert stats | {"max_wait_ms": 0} == {
        "max_size": 64,
        "max_wait_ms": 0,
        "batches": 1,
        "requests": 6,
        "rows": 10,
        "largest": 6,
        "retried": 1,
    }


def test_batches_close_at_max_size_and_answers_stay_equal(forest):
    server = _server_module()
    model, _, rows = forest
    calls = [_predict(rows[i * 30 : (i + 1) * 30], proba=i % 2 == 0) for i in range(5)]
    expected = _one_by_one(_app(server, model), calls)
    app = _app(server, model, max_size=64)
    assert _asgi_many(app, calls) == expected
    stats = _asgi_many(app, [("GET", "/health", b"")])[0][1]["batching"]
    # 30 + 30 rows fit in 64, a third request does not: batches of 2, 2 and 1 requests.
    assert (stats["batches"], stats["requests"], stats["largest"]) == (3, 5, 2)
    assert stats["retried"] == 0


def test_a_request_bigger_than_max_size_runs_alone(forest):
    server = _server_module()
    model, _, rows = forest
    calls = [_predict(rows[:100]), _predict(rows[100:101])]
    app = _app(server, model, max_size=16)
    assert _asgi_many(app, calls) == _one_by_one(_app(server, model), calls)
    stats = _asgi_many(app, [("GET", "/health", b"")])[0][1]["batching"]
    assert (stats["batches"], stats["largest"]) == (2, 1)


def test_batching_is_off_by_default(forest):
    server = _server_module()
    app = _app(server, forest[0])
    assert app.batcher is None
    assert "batching" not in _asgi_many(app, [("GET", "/health", b"")])[0][1]


# --------------------------------------------------------------------------
# the real server: house model, its own old environment, unix socket and token
# --------------------------------------------------------------------------


class UdsServer:
    def __init__(self, python: Path, tmp: Path, *, name: str, batch: tuple[int, float] | None):
        self.dir = tmp / name
        self.dir.mkdir()
        model = self.dir / "model.pkl"
        shutil.copyfile(FIXTURES / "house_price_linreg.pkl", model)
        allowlist = self.dir / "allowlist.json"
        subprocess.run(
            [str(python), "-I", str(LOADER), "--allowlist", str(allowlist)],
            check=True,
            timeout=300,
        )
        self.token = secrets.token_hex(16)
        (self.dir / "token").write_text(self.token)
        self.socket = str(self.dir / "http.sock")
        env = {
            "PATH": "/usr/bin:/bin",
            "MODEL_ALLOWLIST": str(allowlist),
            "MODEL_NAME": "house",
            "MODEL_VERSION": "1",
        }
        if batch is not None:
            env["MODEL_BATCH_MAX_SIZE"] = str(batch[0])
            env["MODEL_BATCH_MAX_WAIT_MS"] = str(batch[1])
        argv = [str(python), str(SERVER_DIR / "server.py"), "--model", str(model)]
        argv += ["--uds", self.socket, "--token-file", str(self.dir / "token")]
        self.log = self.dir / "stderr.log"
        self._log_fh = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=self._log_fh)
        deadline = time.monotonic() + START_TIMEOUT
        while '"listening"' not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def client(self, token: bool = True) -> httpx.Client:
        headers = {TOKEN_HEADER: self.token} if token else {}
        transport = httpx.HTTPTransport(uds=self.socket)
        return httpx.Client(
            transport=transport, base_url="http://replica", headers=headers, timeout=30
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_fh.close()


@pytest.fixture(scope="module")
def house_servers(tmp_path_factory):
    python = _old_env_python()
    if python is None or not (FIXTURES / "house_price_linreg.pkl").exists():
        pytest.skip("the house model or its cached server environment is not on this machine")
    tmp = tmp_path_factory.mktemp("batch")
    servers = []
    try:
        # A long wait on purpose: a lone request must not pay it (adaptive), a burst gathers.
        servers.append(UdsServer(python, tmp, name="on", batch=(64, 250.0)))
        servers.append(UdsServer(python, tmp, name="off", batch=None))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


HOUSE_REQUESTS = [
    {"instances": [[1500, 3, 2]]},
    {"instances": [[2500, 4, 3], [800, 1, 1]]},
    {"instances": [[1500, 3]]},  # wrong feature count
    {"instances": [[1500, "three", 2]]},  # not a number
    {"instances": [[float("inf"), 3, 2]]},  # infinity (JSON "Infinity"): fails in predict
    {"instances": [[float(i), 2.0, 1.0] for i in range(1000, 1017)]},
    {"instances": [[3100.5, 5, 2.5]], "params": {"proba": True}},  # a regressor: no proba
]


def _post(client: httpx.Client, body: dict) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return client.post("/predict", content=json.dumps(body), headers=headers)


def _send_together(server: UdsServer, bodies: list[dict], rounds: int = 3) -> list[list]:
    """Each round, one thread per body, released together by a barrier."""
    answers: list[list] = []
    for _ in range(rounds):
        barrier = threading.Barrier(len(bodies))
        out: list = [None] * len(bodies)

        def call(i: int, body: dict, barrier=barrier, out=out) -> None:
            with server.client() as client:
                client.get("/health")  # connected before the barrier
                barrier.wait()
                response = _post(client, body)
                out[i] = (response.status_code, response.json())

        threads = [threading.Thread(target=call, args=(i, b)) for i, b in enumerate(bodies)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        answers.append(out)
    return answers


def test_concurrent_requests_are_batched_with_the_unbatched_answers(house_servers):
    on, off = house_servers
    bodies = HOUSE_REQUESTS * 3  # 21 requests at once, valid and invalid mixed
    with off.client() as client:
        expected = [(r.status_code, r.json()) for r in (_post(client, b) for b in bodies)]
    assert [status for status, _ in expected[:7]] == [200, 200, 400, 400, 500, 200, 200]
    assert "infinity" in expected[4][1]["error"]
    assert expected[0][1]["predictions"] == pytest.approx([558408.111544802])

    for answers in _send_together(on, bodies):
        assert answers == expected

    with on.client() as client:
        stats = client.get("/health").json()["batching"]
    assert stats["max_size"] == 64 and stats["max_wait_ms"] == 250.0
    # 5 valid requests of 7, 21 at once, 3 rounds: 45 predicted, several in one call.
    assert stats["requests"] == 45
    assert stats["largest"] > 1 and stats["batches"] < stats["requests"]
    assert stats["retried"] >= 1  # the infinite row was batched with others at least once


def test_a_lone_request_does_not_wait_for_a_batch(house_servers):
    on, _ = house_servers
    body = {"instances": [[1500, 3, 2]]}
    with on.client() as client:
        client.post("/predict", json=body)  # the one after a burst may wait: not this one
        times = []
        for _ in range(5):
            started = time.perf_counter()
            response = client.post("/predict", json=body)
            times.append(time.perf_counter() - started)
            assert response.status_code == HTTPStatus.OK
    assert min(times) < 0.15, times  # the wait is 250 ms: a waited request takes longer


def test_health_without_the_token_says_only_ready(house_servers):
    on, _ = house_servers
    with on.client(token=False) as client:
        assert client.get("/health").json() == {"status": "ready"}


# --------------------------------------------------------------------------
# the process runtime passes the setting to its replicas
# --------------------------------------------------------------------------


def _cached_house_spec(tmp: Path) -> tuple[BuildSpec, Path] | None:
    """A spec for the house model whose environment is already in the cache (no pip run)."""
    python = _old_env_python()
    if python is None or not (FIXTURES / "house_price_linreg.pkl").exists():
        return None
    env_dir = python.parent.parent
    pins = {}
    for line in (env_dir / "requirements.txt").read_text().split():
        name, version = line.split("==")
        if name not in SERVER_REQUIREMENTS:
            pins[name] = version
    artifact = tmp / "house.pkl"
    shutil.copyfile(FIXTURES / "house_price_linreg.pkl", artifact)
    for base in (os.environ.get("PORTAL_BASE_IMAGE", ""), "portal-base:bookworm"):
        spec = BuildSpec(
            deployment=f"batch-{secrets.token_hex(4)}",
            model="house",
            version=1,
            artifact_path=artifact,
            artifact_sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
            fmt="pickle",
            requirements=pins,
            base_image=base,
            wheelhouse=Path(os.environ.get("PORTAL_WHEELHOUSE", "/opt/model-portal/wheels")),
            server_dir=SERVER_DIR,
        )
        if env_dir.name == f"rt-{spec.pins_hash()[:16]}":
            return spec, env_dir.parent
    return None


def _state_pid(state_root: Path, name: str) -> int:
    return json.loads((state_root / "replicas" / f"{name}.json").read_text())["pid"]


def test_process_replicas_get_the_batching_setting_and_are_replaced_when_it_changes(tmp_path):
    found = _cached_house_spec(tmp_path)
    if found is None:
        pytest.skip("no cached server environment for the house model's pins")
    spec, env_root = found
    state_root = tmp_path / "state"
    runtime = get_runtime("process", state_root=state_root, env_root=env_root, token_key="k" * 32)
    lines: list[str] = []
    build = runtime.build(spec, log=lines.append)
    assert any("exists" in line for line in lines), lines  # the cached environment, no pip

    def start(limits: ReplicaLimits):
        status = runtime.start_replica(
            deployment=spec.deployment,
            index=0,
            build=build,
            spec=spec,
            limits=limits,
            publish_host="127.0.0.1",
        )
        assert runtime.wait_healthy(status, START_TIMEOUT), runtime.list_replicas()
        token = runtime.replica_token(spec.deployment)
        _, health = replica_request(status.endpoint, "GET", "/health", token=token)
        body = json.dumps({"instances": [[1500, 3, 2]]}).encode()
        code, answer = replica_request(status.endpoint, "POST", "/predict", body=body, token=token)
        assert code == HTTPStatus.OK
        assert json.loads(answer)["predictions"] == pytest.approx([558408.111544802])
        return status, json.loads(health)

    try:
        on = ReplicaLimits(memory_mb=1024, batch_max_size=32, batch_max_wait_ms=3)
        status, health = start(on)
        assert health["batching"]["max_size"] == 32
        assert health["batching"]["max_wait_ms"] == 3.0
        assert health["batching"]["requests"] == 0
        pid = _state_pid(state_root, status.name)
        start(on)
        assert _state_pid(state_root, status.name) == pid  # same setting: reused
        status, health = start(ReplicaLimits(memory_mb=1024))
        assert _state_pid(state_root, status.name) != pid  # another setting: replaced
        assert "batching" not in health
    finally:
        for replica in runtime.list_replicas():
            runtime.remove_replica(replica.name)


# --------------------------------------------------------------------------- the deployment


@pytest.mark.django_db
def test_a_deployment_carries_its_batching_setting_to_its_replicas(api_client, monkeypatch):
    """Launched with batching (API), the setting is stored, audited and handed to every
    replica it starts (services._limits -> ReplicaLimits -> MODEL_BATCH_* env); out of range
    is a 400."""
    from deployments_app import services
    from deployments_app.models import Deployment
    from models_app.models import ModelVersion, RegisteredModel
    from portal.models import AuditEvent

    monkeypatch.setattr(services, "_enqueue", lambda *a, **k: None)  # no worker here
    client = api_client("deployer")
    model = RegisteredModel.objects.create(name="forest")
    ModelVersion.objects.create(
        model=model, number=1, status="ready", artifact_sha256="a" * 64, artifact_size=1
    )
    body = {"name": "forest", "model": "forest", "version": 1}
    too_big = client.post("/api/v1/deployments", {**body, "batch_max_size": 5000}, format="json")
    assert too_big.status_code == HTTPStatus.BAD_REQUEST
    response = client.post(
        "/api/v1/deployments",
        {**body, "batch_max_size": 64, "batch_max_wait_ms": 2},
        format="json",
    )
    assert response.status_code == HTTPStatus.ACCEPTED, response.content
    assert response.json()["batch_max_size"] == 64
    deployment = Deployment.objects.get(name="forest")
    limits = services._limits(deployment)
    assert (limits.batch_max_size, limits.batch_max_wait_ms) == (64, 2.0)
    assert limits.server_env()["MODEL_BATCH_MAX_SIZE"] == "64"
    event = AuditEvent.objects.get(action="deployment.launched")
    assert event.details["batch_max_size"] == 64
