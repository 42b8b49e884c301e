"""The model server (deployments_app/model_server/server.py) as a real process.

Each server is started with the project venv's Python, on 127.0.0.1, with the
fixture models written by scikit-learn 1.9.1 (copied to a temporary directory),
and called over HTTP with httpx. The fixtures made by older scikit-learn
versions need their own environments and are not served here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from deployments_app.runtimes.base import copy_server

REPO = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO / "deployments_app" / "model_server"
FIXTURES = Path("/work/shared/fixtures/models")
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
START_TIMEOUT = 60

pytestmark = pytest.mark.skipif(
    not (FIXTURES / "manifest.json").exists(), reason="fixture models not on this machine"
)


def _manifest() -> dict:
    return {entry["name"]: entry for entry in json.loads((FIXTURES / "manifest.json").read_text())}


# The servers load through the restricted loader (found in models_app/validation from a
# checkout) under this environment's allowlist, enumerated once for the module.
_ALLOWLIST: dict[str, str] = {}


@pytest.fixture(autouse=True, scope="module")
def _allowlist(tmp_path_factory):
    out = tmp_path_factory.mktemp("allowlist") / "allowlist.json"
    loader = REPO / "models_app" / "validation" / "safe_load.py"
    subprocess.run([PYTHON, "-I", str(loader), "--allowlist", str(out)], check=True, timeout=300)
    _ALLOWLIST["path"] = str(out)
    yield
    _ALLOWLIST.clear()


def _clean_env(**extra: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MODEL_") and k not in {"PORT", "HOST", "ACCESS_LOG", "MAX_BODY_BYTES"}
    }
    env["MODEL_ALLOWLIST"] = _ALLOWLIST["path"]
    env.update(extra)
    return env


class ServerProcess:
    """A started server: its process, base URL and stderr log file."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict, log: Path, port: int = 0):
        self.log = log
        self._log_fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=self._log_fh
        )
        self.port = port
        self.url = f"http://127.0.0.1:{port}" if port else ""

    def wait_listening(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"listening"' in line:
                    event = json.loads(line)
                    self.port = event["port"]
                    self.url = f"http://127.0.0.1:{self.port}"
                    return event
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early: {self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"server did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_fh.close()


def _copy_fixture(name: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    shutil.copyfile(FIXTURES / name, target)
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def manifest() -> dict:
    return _manifest()


@pytest.fixture(scope="module")
def spam_server(tmp_path_factory):
    """spam_pipeline.joblib, configured by the command line."""
    tmp = tmp_path_factory.mktemp("spam")
    model = _copy_fixture("spam_pipeline.joblib", tmp)
    argv = [
        PYTHON,
        str(SERVER_DIR / "server.py"),
        "--model", str(model),
        "--format", "joblib",
        "--name", "spam",
        "--version", "2",
        "--host", "127.0.0.1",
        "--port", "0",
    ]  # fmt: skip
    server = ServerProcess(argv, cwd=tmp, env=_clean_env(), log=tmp / "stderr.log")
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def diabetes_server(tmp_path_factory):
    """diabetes_gbr.skops, configured by environment variables only, run as
    ``python -m server`` from a copy of server.py alone (no portal on the path)."""
    tmp = tmp_path_factory.mktemp("diabetes")
    model = _copy_fixture("diabetes_gbr.skops", tmp / "model")
    app_dir = tmp / "app"
    app_dir.mkdir()
    copy_server(SERVER_DIR, app_dir)  # server.py with the loader beside it
    env = _clean_env(
        MODEL_PATH=str(model),
        MODEL_FORMAT="skops",
        MODEL_NAME="diabetes",
        MODEL_VERSION="7",
        MODEL_COLUMNS="",
        HOST="127.0.0.1",
        PORT="0",
        MAX_BODY_BYTES="4096",
        ACCESS_LOG="1",
    )
    env.pop("PYTHONPATH", None)
    server = ServerProcess([PYTHON, "-m", "server"], cwd=app_dir, env=env, log=tmp / "stderr.log")
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def spam(spam_server):
    with httpx.Client(base_url=spam_server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def diabetes(diabetes_server):
    with httpx.Client(base_url=diabetes_server.url, timeout=30) as client:
        yield client


# --------------------------------------------------------------------------
# readiness
# --------------------------------------------------------------------------


def test_health_is_200_only_once_the_model_is_loaded(tmp_path, manifest):
    model = _copy_fixture("spam_pipeline.joblib", tmp_path)
    port = _free_port()
    argv = [PYTHON, str(SERVER_DIR / "server.py"), "--model", str(model), "--name", "spam",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    server = ServerProcess(argv, cwd=tmp_path, env=_clean_env(), log=tmp_path / "e.log", port=port)
    try:
        refused = 0
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while True:
                assert time.monotonic() < deadline, server.log.read_text()
                assert server.proc.poll() is None, server.log.read_text()
                try:
                    response = client.get("/health")
                except httpx.TransportError:
                    refused += 1
                    time.sleep(0.02)
                    continue
                break
            # The first answer ever given is "ready", and predictions work at once.
            assert response.status_code == 200
            assert response.json() == {"status": "ready", "model": "spam", "version": 1}
            entry = manifest["spam"]
            r = client.post("/predict", json={"instances": entry["input_example"]})
            assert r.status_code == 200
            assert r.json()["predictions"] == entry["expected_predict"]
        assert refused > 0, "the port answered before the model was loaded"
        event = server.wait_listening()
        assert event["load_ms"] > 0
    finally:
        server.stop()


def _load_server_module():
    spec = importlib.util.spec_from_file_location(
        "model_server_under_test", SERVER_DIR / "server.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _asgi_call(app, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    scope = {"type": "http", "method": method, "path": path, "headers": [], "client": ("t", 1)}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    # In a thread of its own: another test's library (Playwright's sync API) may leave an
    # event loop running in the main thread, where asyncio.run() refuses to start.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_app_without_a_loaded_model_answers_503():
    server = _load_server_module()
    app = server.App(None)
    assert _asgi_call(app, "GET", "/health") == (503, {"status": "loading"})
    assert _asgi_call(app, "GET", "/v2/health/ready")[0] == 503
    assert _asgi_call(app, "GET", "/v2/health/live")[0] == 200
    status, body = _asgi_call(app, "POST", "/predict", b'{"instances": [[1]]}')
    assert status == 503 and "not loaded" in body["error"]


def test_server_does_not_import_the_portal(tmp_path):
    shutil.copyfile(SERVER_DIR / "server.py", tmp_path / "server.py")
    code = (
        "import sys, server\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'portal', "
        "'deployments_app', 'models_app', 'pandas', 'sklearn')]\n"
        "assert not bad, bad\n"
    )
    env = _clean_env()
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [PYTHON, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_load_failure_exits_with_a_message(tmp_path):
    broken = tmp_path / "model.joblib"
    broken.write_bytes(b"not a model")
    result = subprocess.run(
        [PYTHON, str(SERVER_DIR / "server.py"), "--model", str(broken), "--port", "0",
         "--host", "127.0.0.1"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3
    assert "load_failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_health_endpoints(spam, diabetes):
    r = spam.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "model": "spam", "version": 2}
    assert diabetes.get("/health").json() == {"status": "ready", "model": "diabetes", "version": 7}
    assert spam.get("/v2/health/live").status_code == 200
    assert spam.get("/v2/health/ready").json() == {"ready": True}
    assert spam.get("/v2").json()["extensions"] == []


# --------------------------------------------------------------------------
# /predict
# --------------------------------------------------------------------------


def test_predict_rows_with_named_columns(spam, manifest):
    entry = manifest["spam"]
    r = spam.post("/predict", json={"instances": entry["input_example"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == entry["expected_predict"]
    assert all(type(p) is int for p in body["predictions"])
    assert "probabilities" not in body
    assert body["model"] == "spam" and body["version"] == 2


def test_predict_proba(spam, manifest):
    entry = manifest["spam"]
    payload = {"instances": entry["input_example"], "params": {"proba": True}}
    body = spam.post("/predict", json=payload).json()
    assert body["predictions"] == entry["expected_predict"]
    assert np.allclose(body["probabilities"], entry["expected_predict_proba"])
    assert body["classes"] == [0, 1]


def test_predict_records(spam, manifest):
    entry = manifest["spam"]
    records = [dict(zip(entry["columns"], row, strict=True)) for row in entry["input_example"]]
    r = spam.post("/predict", json={"instances": records, "params": {"proba": True}})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == entry["expected_predict"]
    assert np.allclose(r.json()["probabilities"], entry["expected_predict_proba"])


def test_predict_inputs_rows_and_columns(spam, manifest):
    entry = manifest["spam"]
    r = spam.post("/predict", json={"inputs": entry["input_example"]})
    assert r.json()["predictions"] == entry["expected_predict"]
    columnar = {
        col: [row[i] for row in entry["input_example"]] for i, col in enumerate(entry["columns"])
    }
    r = spam.post("/predict", json={"inputs": columnar})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == entry["expected_predict"]


def test_predict_numeric_skops_model(diabetes, manifest):
    entry = manifest["diabetes"]
    r = diabetes.post("/predict", json={"instances": entry["input_example"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert np.allclose(body["predictions"], entry["expected_predict"])
    assert all(type(p) is float for p in body["predictions"])
    assert body["version"] == 7
    # A regressor has no predict_proba: asking for it gives predictions only.
    body = diabetes.post(
        "/predict", json={"inputs": entry["input_example"], "params": {"proba": True}}
    ).json()
    assert np.allclose(body["predictions"], entry["expected_predict"])
    assert "probabilities" not in body


# --------------------------------------------------------------------------
# Open Inference Protocol (V2)
# --------------------------------------------------------------------------


def test_v2_metadata_and_ready(spam, diabetes):
    meta = spam.get("/v2/models/spam").json()
    assert meta["name"] == "spam" and meta["versions"] == ["2"] and meta["platform"] == "sklearn"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("content", "BYTES", [-1]),
        ("sender", "BYTES", [-1]),
    ]
    assert {o["name"]: o for o in meta["outputs"]}["predict_proba"]["shape"] == [-1, 2]
    assert {o["name"]: o for o in meta["outputs"]}["predict"]["datatype"] == "INT64"
    meta = diabetes.get("/v2/models/diabetes/versions/7").json()
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 10]}]
    assert meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    r = spam.get("/v2/models/spam/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    assert diabetes.get("/v2/models/diabetes/versions/7/ready").status_code == 200


def test_v2_infer_one_matrix_tensor(diabetes, manifest):
    entry = manifest["diabetes"]
    rows = entry["input_example"]
    for data in (rows, [v for row in rows for v in row]):  # nested and flat (row-major)
        payload = {
            "id": "req-42",
            "inputs": [{"name": "input-0", "shape": [2, 10], "datatype": "FP64", "data": data}],
        }
        r = diabetes.post("/v2/models/diabetes/infer", json=payload)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "diabetes" and body["model_version"] == "7"
        assert body["id"] == "req-42"
        (out,) = body["outputs"]
        assert out["name"] == "predict" and out["datatype"] == "FP64" and out["shape"] == [2]
        assert np.allclose(out["data"], entry["expected_predict"])


def test_v2_infer_one_tensor_per_column_bytes(spam, manifest):
    entry = manifest["spam"]
    content = [row[0] for row in entry["input_example"]]
    sender = [[row[1]] for row in entry["input_example"]]  # shape [N, 1]
    payload = {
        "id": "abc",
        "inputs": [
            {"name": "content", "shape": [2], "datatype": "BYTES", "data": content},
            {"name": "sender", "shape": [2, 1], "datatype": "BYTES", "data": sender},
        ],
        "parameters": {"proba": True},
    }
    r = spam.post("/v2/models/spam/infer", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "abc"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["predict"]["data"] == entry["expected_predict"]
    assert outputs["predict"]["datatype"] == "INT64" and outputs["predict"]["shape"] == [2]
    proba = outputs["predict_proba"]
    assert proba["shape"] == [2, 2] and proba["datatype"] == "FP64"
    assert np.allclose(np.reshape(proba["data"], (2, 2)), entry["expected_predict_proba"])


def test_v2_infer_requested_outputs_and_bytes_matrix(spam, manifest):
    entry = manifest["spam"]
    payload = {
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "BYTES", "data": entry["input_example"]}
        ],
        "outputs": [{"name": "predict_proba"}],
    }
    body = spam.post("/v2/models/spam/infer", json=payload).json()
    assert [o["name"] for o in body["outputs"]] == ["predict_proba"]
    assert "id" not in body
    assert np.allclose(
        np.reshape(body["outputs"][0]["data"], (2, 2)), entry["expected_predict_proba"]
    )


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    assert "Traceback" not in body["error"]
    return body["error"]


def test_400_wrong_feature_count(diabetes, spam):
    msg = _error(diabetes.post("/predict", json={"instances": [[1.0, 2.0, 3.0]]}), 400)
    assert "expected 10 features" in msg
    _error(diabetes.post("/predict", json={"instances": [[0.0] * 10, [0.0] * 9]}), 400)
    _error(spam.post("/predict", json={"instances": [["only one"]]}), 400)
    tensor = {"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}
    _error(diabetes.post("/v2/models/diabetes/infer", json={"inputs": [tensor]}), 400)
    tensor = {"name": "input-0", "shape": [2, 10], "datatype": "FP64", "data": [1, 2, 3]}
    _error(diabetes.post("/v2/models/diabetes/infer", json={"inputs": [tensor]}), 400)


def test_400_non_numeric(diabetes):
    row = ["abc"] + [0.0] * 9
    msg = _error(diabetes.post("/predict", json={"instances": [row]}), 400)
    assert "non-numeric" in msg
    tensor = {"name": "input-0", "shape": [1, 10], "datatype": "BYTES", "data": row}
    _error(diabetes.post("/v2/models/diabetes/infer", json={"inputs": [tensor]}), 400)
    _error(diabetes.post("/predict", json={"instances": [[{"a": 1}] + [0.0] * 9]}), 400)


def test_400_malformed_json_and_bad_shapes(diabetes, spam):
    headers = {"content-type": "application/json"}
    msg = _error(diabetes.post("/predict", content=b'{"instances": [[1,', headers=headers), 400)
    assert "malformed JSON" in msg
    _error(diabetes.post("/predict", content=b"", headers=headers), 400)
    _error(diabetes.post("/predict", json=[1, 2]), 400)
    _error(diabetes.post("/predict", json={"rows": [[1]]}), 400)
    _error(diabetes.post("/predict", json={"instances": []}), 400)
    _error(diabetes.post("/predict", json={"instances": [{"age": 1}]}), 400)  # no column names
    _error(spam.post("/predict", json={"instances": [{"content": "x"}]}), 400)  # missing column
    _error(spam.post("/v2/models/spam/infer", content=b"{nope", headers=headers), 400)
    _error(spam.post("/v2/models/spam/infer", json={"inputs": []}), 400)
    bad = {"inputs": [{"name": "content", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    _error(spam.post("/v2/models/spam/infer", json=bad), 400)  # sender missing
    unknown_output = {
        "inputs": [{"name": "x", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}],
        "outputs": [{"name": "decision_function"}],
    }
    _error(spam.post("/v2/models/spam/infer", json=unknown_output), 400)


def test_404(spam):
    _error(spam.get("/nope"), 404)
    _error(spam.post("/v1/models/spam:predict", json={}), 404)
    _error(spam.get("/v2/models/other"), 404)
    _error(spam.get("/v2/models/other/ready"), 404)
    _error(spam.post("/v2/models/other/infer", json={"inputs": []}), 404)
    _error(spam.get("/v2/models/spam/versions/9"), 404)
    _error(spam.get("/v2/models/spam/explain"), 404)


def test_405(spam):
    r = spam.get("/predict")
    _error(r, 405)
    assert r.headers["allow"] == "POST"
    _error(spam.post("/health", json={}), 405)
    _error(spam.get("/v2/models/spam/infer"), 405)
    _error(spam.delete("/v2/models/spam"), 405)
    _error(spam.put("/v2/health/ready"), 405)


def test_413_body_over_the_limit(diabetes):
    # MAX_BODY_BYTES=4096 for this server.
    big = {"instances": [[0.1] * 10] * 200}
    msg = _error(diabetes.post("/predict", json=big), 413)
    assert "4096" in msg

    def chunks():  # no Content-Length: the server counts while reading
        yield b'{"instances": ['
        for _ in range(100):
            yield b"[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1],"
        yield b"[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1]]}"

    _error(diabetes.post("/predict", content=chunks()), 413)
    # Still serving afterwards.
    assert diabetes.get("/health").status_code == 200


def test_500_when_predict_raises(spam):
    # Numbers where the text vectorizer expects strings: predict itself raises.
    msg = _error(spam.post("/predict", json={"instances": [[1, 2]]}), 500)
    assert msg.startswith("predict failed:")


def test_access_log_only_when_enabled(spam, diabetes, spam_server, diabetes_server, manifest):
    diabetes.post("/predict", json={"instances": manifest["diabetes"]["input_example"]})
    spam.get("/health")
    time.sleep(0.2)
    assert '"POST /predict" 200' in diabetes_server.log.read_text()
    assert '"GET /health"' not in spam_server.log.read_text()


def test_python_dash_m_model_server(tmp_path, manifest):
    """``python -m model_server`` from the directory holding the package."""
    model = _copy_fixture("diabetes_gbr.skops", tmp_path)
    copy_server(SERVER_DIR, tmp_path / "model_server")
    env = _clean_env()
    env.pop("PYTHONPATH", None)
    argv = [PYTHON, "-m", "model_server", "--model", str(model), "--name", "d",
            "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
    server = ServerProcess(argv, cwd=tmp_path, env=env, log=tmp_path / "e.log")
    try:
        server.wait_listening()
        entry = manifest["diabetes"]
        r = httpx.post(f"{server.url}/predict", json={"instances": entry["input_example"]})
        assert np.allclose(r.json()["predictions"], entry["expected_predict"])
    finally:
        server.stop()


def test_health_answers_while_a_large_batch_is_computed(tmp_path):
    """A big batch is parsed and predicted on the server's predict thread: /health (what
    the reconciler's liveness probe calls) and small calls keep answering meanwhile."""
    import joblib
    from sklearn.neighbors import KNeighborsRegressor

    # A plain estimator that takes its time (brute-force neighbours over 200,000 points:
    # about 2 s for 2,500 rows here); the loader admits no custom code in a model.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200_000, 3))
    model = KNeighborsRegressor(n_neighbors=1, algorithm="brute").fit(x, x @ [1.0, 2.0, 3.0])
    joblib.dump(model, tmp_path / "slow.joblib")
    argv = [
        PYTHON, str(SERVER_DIR / "server.py"),
        "--model", str(tmp_path / "slow.joblib"), "--format", "joblib",
        "--name", "slow", "--version", "1", "--host", "127.0.0.1", "--port", "0",
    ]  # fmt: skip
    server = ServerProcess(argv, cwd=tmp_path, env=_clean_env(), log=tmp_path / "stderr.log")
    try:
        server.wait_listening()
        big = rng.normal(size=(2500, 3)).round(6).tolist()
        with (
            httpx.Client(base_url=server.url, timeout=30) as client,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            pending = pool.submit(client.post, "/predict", json={"instances": big})
            time.sleep(0.5)  # the batch is being computed now
            started = time.monotonic()
            health = client.get("/health", timeout=1.0)
            small = client.post("/predict", json={"instances": [[1, 1, 1]]}, timeout=1.0)
            quick = time.monotonic() - started
            assert not pending.done()  # still computing: the answers above did not wait
            answer = pending.result(timeout=30)
        assert health.status_code == 200 and quick < 1.0
        assert small.json()["predictions"] == pytest.approx(model.predict([[1, 1, 1]]).tolist())
        assert answer.status_code == 200
        assert answer.json()["predictions"] == pytest.approx(model.predict(big).tolist())
    finally:
        server.stop()
