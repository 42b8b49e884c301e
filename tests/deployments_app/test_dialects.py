"""The standard inference clients, unchanged, against a live portal: tritonclient[http] in
binary and JSON mode (Open Inference Protocol V2), KServe V1 by URL alone, and MLflow scoring
scripts that change only their base URL; plus the version-pinned routes.

The portal runs as `runportal` serves it (uvicorn, portal.asgi: API-key calls on the
asynchronous lane, metadata reads through Django), on this test's database, in front of
real replicas of three fixture models (scikit-learn 1.3.2, 1.5.2 and 1.9.1).
"""

from __future__ import annotations

import gzip
import io
import json
from http import HTTPStatus

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from deployments_app.models import PredictionLog
from tests.deployments_app import test_predict as tp

pytestmark = [pytest.mark.docker, pytest.mark.slow]
MODELS = {
    "house": "house_price_linreg.pkl",  # 1.5.2, 3 positional features, regression
    "spam": "spam_pipeline.joblib",  # 1.9.1, text columns content + sender, predict_proba
    "iris": "iris_rf_sklearn13.joblib",  # 1.3.2, 4 named float columns, predict_proba
}
# The replicas' token derives from the portal's secret: the fixtures of test_predict share it.
_shared_secret = tp._shared_secret
world = tp.world
key_for = tp.key_for


@pytest.fixture(scope="module")
def served(tmp_path_factory, django_db_blocker):
    with tp.serve_models(MODELS, tmp_path_factory) as found:
        yield found


@pytest.fixture
def live(tmp_path, world, key_for, transactional_db):
    """(base URL, {alias: (deployment, manifest entry, API key)}) of a running portal."""
    models = {
        alias: (deployment, entry, key_for(deployment))
        for alias, (deployment, entry) in ((a, world[a]) for a in MODELS)
    }
    with tp.portal_server(tmp_path) as base:
        yield base, models


def _triton(base: str, **kwargs) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=base.removeprefix("http://"), **kwargs)


def _auth(key: str) -> dict[str, str]:
    """Headers for one tritonclient call: it writes its framing and encoding headers into
    the dict it is given, so a dict reused across calls would carry a stale
    Inference-Header-Content-Length (a real Triton server would misread it too)."""
    return {"Authorization": f"Bearer {key}"}


def _tensor(name: str, values: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(values.shape), np_to_triton_dtype(values.dtype))
    tensor.set_data_from_numpy(values, binary_data=binary)
    return tensor


# --------------------------------------------------------------------------- tritonclient


def test_tritonclient_binary_and_json_modes_unchanged(live):
    base, models = live
    client = _triton(base)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]

        house, house_entry, house_key = models["house"]
        assert client.is_model_ready(house.name, headers=_auth(house_key))
        assert client.is_model_ready(house.name, model_version="1", headers=_auth(house_key))
        meta = client.get_model_metadata(house.name, headers=_auth(house_key))
        assert meta["versions"] == ["1"] and meta["inputs"][0]["shape"] == [-1, 3]

        rows = np.array(house_entry["input_example"])
        expected = np.array(house_entry["expected_predict"])
        calls = 0
        for dtype in (np.float64, np.float32, np.int64):
            for binary in (True, False):
                result = client.infer(
                    house.name,
                    [_tensor("input-0", rows.astype(dtype), binary)],
                    outputs=[triton.InferRequestedOutput("predict", binary_data=binary)],
                    request_id=f"house-{dtype.__name__}-{binary}",
                    headers=_auth(house_key),
                )
                calls += 1
                np.testing.assert_allclose(result.as_numpy("predict"), expected, rtol=1e-6)
                response = result.get_response()
                assert response["model_name"] == house.name
                assert response["model_version"] == "1"
                assert response["id"] == f"house-{dtype.__name__}-{binary}"
                # Binary outputs carry their size, JSON outputs their data.
                (output,) = response["outputs"]
                assert ("binary_data_size" in output.get("parameters", {})) == binary
                assert ("data" in output) == (not binary)

        # The client's defaults: binary inputs, no outputs named -> every output in binary.
        result = client.infer(
            house.name, [_tensor("input-0", rows, True)], headers=_auth(house_key)
        )
        calls += 1
        np.testing.assert_allclose(result.as_numpy("predict"), expected)

        # Text: one BYTES tensor per named column; two outputs, one binary, one JSON.
        spam, spam_entry, spam_key = models["spam"]
        text = np.array(spam_entry["input_example"], dtype=object)
        inputs = [
            _tensor(column, text[:, [i]], binary=(i == 0))
            for i, column in enumerate(spam_entry["columns"])
        ]
        result = client.infer(
            spam.name,
            inputs,
            outputs=[
                triton.InferRequestedOutput("predict", binary_data=True),
                triton.InferRequestedOutput("predict_proba", binary_data=False),
            ],
            headers=_auth(spam_key),
        )
        calls += 1
        assert result.as_numpy("predict").tolist() == spam_entry["expected_predict"]
        np.testing.assert_allclose(
            result.as_numpy("predict_proba"), spam_entry["expected_predict_proba"], rtol=1e-9
        )

        # Named float columns, FP32, gzip-compressed request, pinned version, INT64 classes.
        iris, iris_entry, iris_key = models["iris"]
        features = np.array(iris_entry["input_example"], dtype=np.float32)
        compressed = _triton(base)
        try:
            result = compressed.infer(
                iris.name,
                [
                    _tensor(column, features[:, [i]], binary=True)
                    for i, column in enumerate(iris_entry["columns"])
                ],
                model_version="1",
                request_compression_algorithm="gzip",
                headers=_auth(iris_key),
            )
        finally:
            compressed.close()
        calls += 1
        assert result.as_numpy("predict").tolist() == iris_entry["expected_predict"]
        assert result.as_numpy("predict_proba").shape == (3, 3)
        assert result.get_response()["model_version"] == "1"
    finally:
        client.close()
    assert PredictionLog.objects.filter(status_code=200).count() == calls
    assert set(PredictionLog.objects.values_list("version_number", flat=True)) == {1}


def test_tritonclient_sees_clear_errors(live):
    base, models = live
    house, house_entry, key = models["house"]
    rows = np.array(house_entry["input_example"], dtype=np.float64)
    client = _triton(base)
    try:
        cases = [
            # (call, status, words in the message)
            (lambda: client.infer(house.name, [_tensor("input-0", rows, True)]), "401", "key"),
            (
                lambda: client.infer(
                    house.name,
                    [_tensor("input-0", rows, True)],
                    model_version="7",
                    headers=_auth(key),
                ),
                "404",
                "version 7",
            ),
            (
                lambda: client.infer(
                    house.name, [_tensor("input-0", rows[:, :2].copy(), True)], headers=_auth(key)
                ),
                "422",
                "expected 3 features",
            ),
            (
                lambda: client.infer(
                    house.name,
                    [_tensor("input-0", rows, True)],
                    outputs=[triton.InferRequestedOutput("predict_proba")],
                    headers=_auth(key),
                ),
                "400",
                "predict_proba",
            ),
        ]
        for call, status, words in cases:
            with pytest.raises(InferenceServerException) as caught:
                call()
            assert caught.value.status() == status, caught.value
            assert words in caught.value.message(), caught.value
    finally:
        client.close()


def test_v2_binary_body_over_the_limit_or_with_wrong_sizes_is_a_400_not_a_500(live):
    base, models = live
    house, _, key = models["house"]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 3],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": 24},
                }
            ]
        }
    ).encode()
    values = np.array([1500, 3, 2], dtype="<f8").tobytes()
    url = f"{base}/v2/models/{house.name}/infer"
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30) as http:
        ok = http.post(
            url,
            content=header + values,
            headers={**auth, "Inference-Header-Content-Length": str(len(header))},
        )
        assert ok.status_code == HTTPStatus.OK, ok.text  # no Content-Type, as tritonclient
        short = http.post(
            url,
            content=header + values[:-8],
            headers={**auth, "Inference-Header-Content-Length": str(len(header))},
        )
        assert short.status_code == HTTPStatus.BAD_REQUEST and "error" in short.json()
        bomb = gzip.compress(b"0" * (64 * 1024 * 1024))
        refused = http.post(url, content=bomb, headers={**auth, "Content-Encoding": "gzip"})
        assert refused.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE, refused.text
        assert "error" in refused.json()


# --------------------------------------------------------------------------- KServe V1, MLflow


def test_kserve_v1_and_mlflow_clients_change_only_their_url(live):
    base, models = live
    house, house_entry, house_key = models["house"]
    spam, spam_entry, spam_key = models["spam"]
    house_auth = {"Authorization": f"Bearer {house_key}"}
    spam_auth = {"Authorization": f"Bearer {spam_key}"}
    with httpx.Client(timeout=30) as http:
        # KServe V1: the model's URL is the client's only setting.
        ready = http.get(f"{base}/v1/models/{house.name}", headers=house_auth)
        assert ready.status_code == HTTPStatus.OK
        assert ready.json() == {"name": house.name, "ready": True}
        answer = http.post(
            f"{base}/v1/models/{house.name}:predict",
            json={"instances": house_entry["input_example"]},
            headers=house_auth,
        )
        assert answer.status_code == HTTPStatus.OK, answer.text
        assert answer.json().keys() == {"predictions"}
        np.testing.assert_allclose(answer.json()["predictions"], house_entry["expected_predict"])
        assert answer.headers["x-model-version"] == "1"

        # MLflow scoring: what a script sends to `mlflow models serve`, at a new base URL.
        scoring = f"{base}/api/v1/deployments/{spam.name}"
        assert http.get(f"{scoring}/ping", headers=spam_auth).status_code == HTTPStatus.OK
        frame = pd.DataFrame(spam_entry["input_example"], columns=spam_entry["columns"])
        bodies = {
            "dataframe_split": {"dataframe_split": frame.to_dict(orient="split")},
            "dataframe_records": {"dataframe_records": frame.to_dict(orient="records")},
            "instances": {"instances": frame.to_dict(orient="records")},
            "inputs": {"inputs": frame.to_dict(orient="list")},
            "params": {"dataframe_split": frame.to_dict(orient="split"), "params": {}},
        }
        for label, body in bodies.items():
            answer = http.post(f"{scoring}/invocations", json=body, headers=spam_auth)
            assert answer.status_code == HTTPStatus.OK, (label, answer.text)
            assert answer.json() == {"predictions": spam_entry["expected_predict"]}, label
        csv = io.StringIO()
        frame.to_csv(csv, index=False)
        answer = http.post(
            f"{scoring}/invocations",
            content=csv.getvalue(),
            headers={**spam_auth, "Content-Type": "text/csv"},
        )
        assert answer.status_code == HTTPStatus.OK, answer.text
        assert answer.json() == {"predictions": spam_entry["expected_predict"]}

        # Errors as MLflow renders them.
        bad = http.post(
            f"{scoring}/invocations",
            json={"dataframe_split": {}, "instances": []},
            headers=spam_auth,
        )
        assert bad.status_code == HTTPStatus.BAD_REQUEST
        assert bad.json()["error_code"] == "BAD_REQUEST" and "exactly one" in bad.json()["message"]
        unknown = http.post(
            f"{scoring}/invocations", json={"instances": [{"content": "x"}]}, headers=spam_auth
        )
        assert unknown.status_code == HTTPStatus.BAD_REQUEST  # MLflow has no 422
        assert "sender" in unknown.json()["message"]
        anonymous = http.post(f"{scoring}/invocations", json=bodies["instances"])
        assert anonymous.json()["error_code"] == "UNAUTHENTICATED"
    rows = PredictionLog.objects.filter(deployment_name=spam.name)
    assert rows.filter(status_code=200).count() == len(bodies) + 1
    assert rows.filter(status_code=400).count() == 1  # the row keeps the portal's own status
    assert rows.filter(status_code=422).count() == 1


def test_version_pinned_routes(live):
    base, models = live
    house, entry, key = models["house"]
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30) as http:
        pinned = http.post(
            f"{base}/api/v1/deployments/{house.name}/versions/1/predict",
            json={"instances": entry["input_example"]},
            headers=auth,
        )
        assert pinned.status_code == HTTPStatus.OK, pinned.text
        assert pinned.json()["version"] == 1
        other = http.post(
            f"{base}/api/v1/deployments/{house.name}/versions/2/predict",
            json={"instances": entry["input_example"]},
            headers=auth,
        )
        assert other.status_code == HTTPStatus.NOT_FOUND
        assert "does not serve version 2" in other.json()["error"]
        meta = http.get(f"{base}/v2/models/{house.name}/versions/2", headers=auth)
        assert meta.status_code == HTTPStatus.NOT_FOUND
    assert PredictionLog.objects.filter(status_code=404, version_number=None).count() == 1


# --------------------------------------------------------------------------- both lanes


client = tp.client  # every case below through Django's stack and the asynchronous lane


def _binary_v2(rows: list[list[float]]) -> tuple[bytes, dict[str, str]]:
    values = np.array(rows, dtype="<f8")
    tensor = _tensor("input-0", values, binary=True)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=[triton.InferRequestedOutput("predict", binary_data=False)]
    )
    return body, {"HTTP_INFERENCE_HEADER_CONTENT_LENGTH": str(json_size)}


def test_every_dialect_answers_alike_on_both_lanes(client, world, key_for):
    """The same plan drives both lanes: same statuses, same bodies, one log row per call."""
    house, entry = world["house"]
    rows = entry["input_example"]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key_for(house)}"}
    binary, framing = _binary_v2(rows)
    cases = [
        # (path, body, content type ("" = none, as tritonclient), extra headers, status)
        (f"/v1/models/{house.name}:predict", {"instances": rows}, "application/json", {}, 200),
        (f"/api/v1/deployments/{house.name}/invocations", {"inputs": rows}, None, {}, 200),
        (
            f"/api/v1/deployments/{house.name}/versions/1/predict",
            {"instances": rows},
            None,
            {},
            200,
        ),
        (
            f"/api/v1/deployments/{house.name}/versions/9/predict",
            {"instances": rows},
            None,
            {},
            404,
        ),
        (f"/v2/models/{house.name}/infer", binary, "", framing, 200),
        (f"/v2/models/{house.name}/versions/1/infer", binary, "", framing, 200),
        (f"/v2/models/{house.name}/infer", binary[:-1], "", framing, 400),
        (f"/v1/models/{house.name}:predict", {"inputs": rows}, None, {}, 400),
        # MLflow says 400 for every bad input; the log keeps the portal's 422.
        (f"/api/v1/deployments/{house.name}/invocations", "a,b\n1", "text/csv", {}, 400),
    ]
    for path, body, content_type, extra, status in cases:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        response = client.post(
            path,
            data=data,
            content_type="application/json" if content_type is None else content_type,
            **auth,
            **extra,
        )
        assert response.status_code == status, (path, response.content[:300])
        answer = response.json()
        if status != 200:
            assert answer.get("error") or answer.get("message"), answer
            continue
        predictions = answer.get("predictions")
        if predictions is None:  # V2
            predictions = answer["outputs"][0]["data"]
            assert answer["model_version"] == "1"
        np.testing.assert_allclose(predictions, entry["expected_predict"])
        assert response["X-Model-Version"] == "1"
    logged = PredictionLog.objects.filter(deployment_name=house.name)
    assert logged.count() == len(cases)
    statuses = sorted(c[4] for c in cases[:-1]) + [422]
    assert sorted(logged.values_list("status_code", flat=True)) == sorted(statuses)
