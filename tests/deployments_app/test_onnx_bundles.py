"""ONNX export at validation and ONNX edge bundles (#20), on every shared fixture.

Real models, the real sandbox, real skl2onnx/onnxruntime environments (built once in the
environment cache), the real bundle server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
from http import HTTPStatus

import httpx
import numpy as np
import pytest
from django.conf import settings as dj_settings

from deployments_app.onnx_bundle import onnx_requirements
from models_app import services
from models_app.models import ModelVersion
from models_app.validation import envs, onnx_export, sandbox
from portal.audit import Actor
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR
from tests.services import free_port, wait_for_port

# What skl2onnx 1.20 says of the shared fixtures (the spam pipeline's sender column uses a
# character n-gram TfidfVectorizer, which it does not convert).
CONVERTS = {
    "iris_rf_sklearn13.joblib": True,
    "house_price_linreg.pkl": True,
    "breast_cancer_svc.joblib": True,
    "diabetes_gbr.skops": True,
    "spam_pipeline.joblib": False,
}


def _validated(name: str, entry: dict, user) -> ModelVersion:
    version, _ = services.model_version_upload(
        model_name=entry["name"],
        chunks=[(FIXTURE_DIR / name).read_bytes()],
        actor=Actor.system(),
        user=user,
        filename=name,
        example_text=json.dumps(entry["input_example"]),
    )
    services.model_version_validate(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.READY, version.rejection_reason
    return version


def _unpack(content: bytes, dest) -> object:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    (bundle,) = dest.iterdir()
    return bundle


def _scaled_delta(got, want) -> float:
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    return float((np.abs(got - want) / np.maximum(1.0, np.abs(want))).max())


@pytest.mark.slow
@pytest.mark.django_db
def test_every_fixture_converts_or_says_why_and_onnx_bundles_answer_within_tolerance(
    settings, manifest, api_client, tmp_path
):
    settings.PORTAL_ONNX_EXPORT = True
    settings.PORTAL_ARTIFACT_DIR = tmp_path / "artifacts"
    client = api_client("deployer")
    for name, converts in CONVERTS.items():
        entry = manifest[name]
        version = _validated(name, entry, client.user)
        onnx = version.report["onnx"]
        url = f"/api/v1/models/{entry['name']}/versions/{version.number}/bundle?flavor=onnx"
        if not converts:
            assert onnx["status"] == "not converted", onnx
            assert "tokenizer='word'" in onnx["reason"], onnx["reason"]
            refused = client.get(url)
            assert refused.status_code == HTTPStatus.CONFLICT
            assert "no ONNX model" in refused.json()["error"]
            continue
        assert onnx["status"] == "converted", onnx
        assert onnx["labels_identical"] in (True, None)  # None: a regressor
        assert onnx["max_delta"] <= onnx["tolerance"] == settings.PORTAL_ONNX_TOLERANCE
        assert (
            onnx["rows_checked"] == len(entry["input_example"]) + settings.PORTAL_ONNX_SAMPLE_ROWS
        )
        assert onnx["opset"] == onnx_export.OPSETS[0]

        response = client.get(url)
        assert response.status_code == HTTPStatus.OK, response.content[:300]
        content = b"".join(response.streaming_content)
        bundle = _unpack(content, tmp_path / entry["name"])
        listed = json.loads((bundle / "manifest.json").read_text())
        assert listed["flavor"] == "onnx" and listed["onnx_sha256"] == onnx["sha256"]
        for file, digest in listed["files"].items():
            assert hashlib.sha256((bundle / file).read_bytes()).hexdigest() == digest, file
        assert (bundle / "model.onnx").stat().st_size == onnx["size"]
        reqs = (bundle / "requirements.txt").read_text()
        assert "onnxruntime==1.23.2" in reqs and "scikit-learn" not in reqs

        # The server as README.txt runs it, in an environment of exactly those pins.
        env = envs.ensure_env(
            onnx_requirements(version),
            root=dj_settings.PORTAL_ENV_CACHE,
            wheelhouse=dj_settings.PORTAL_WHEELHOUSE,
        )
        assert "scikit-learn" not in env.frozen
        port = free_port()
        argv = [str(env.python), *listed["run"][1:]]
        argv[argv.index("--port") + 1] = str(port)
        log = (tmp_path / f"{entry['name']}.log").open("wb")
        proc = subprocess.Popen(
            argv, cwd=bundle, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        )  # fmt: skip
        try:
            wait_for_port(port, timeout=60)
            base = f"http://127.0.0.1:{port}"
            body = {"instances": entry["input_example"], "params": {"proba": True}}
            answer = httpx.post(f"{base}/predict", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            got = answer.json()
            want = entry["expected_predict"]
            if "expected_predict_proba" in entry:
                assert got["predictions"] == want  # labels identical
                probs = got.get("probabilities")
                assert probs is not None, got
                delta = _scaled_delta(probs, entry["expected_predict_proba"])
            else:
                delta = _scaled_delta(got["predictions"], want)
            assert delta <= onnx["tolerance"], (name, delta)
            # The Open Inference Protocol (V2) dialect of the portal's server, too.
            rows = entry["input_example"]
            tensor = {"name": "input-0", "shape": [len(rows), len(rows[0])],
                      "datatype": "FP64", "data": [v for row in rows for v in row]}  # fmt: skip
            again = httpx.post(
                f"{base}/v2/models/{entry['name']}/infer", json={"inputs": [tensor]}, timeout=30
            )
            assert again.status_code == 200, again.text
            (out,) = again.json()["outputs"]
            assert _scaled_delta(out["data"], got["predictions"]) == 0.0
            bad = httpx.post(f"{base}/predict", json={"instances": [[1.0]]}, timeout=30)
            assert bad.status_code == 400, bad.text
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
            log.close()
    assert AuditEvent.objects.filter(
        action="model_version.bundle_downloaded", details__flavor="onnx"
    ).count() == sum(CONVERTS.values())


@pytest.mark.django_db
def test_export_off_leaves_no_onnx_and_the_onnx_bundle_says_why(settings, manifest, api_client):
    settings.PORTAL_ONNX_EXPORT = False
    client = api_client("deployer")
    name = "house_price_linreg.pkl"
    version = _validated(name, manifest[name], client.user)
    assert "onnx" not in version.report
    response = client.get(
        f"/api/v1/models/house-price/versions/{version.number}/bundle?flavor=onnx"
    )
    assert response.status_code == HTTPStatus.CONFLICT
    assert "PORTAL_ONNX_EXPORT was off" in response.json()["error"]
    bad = client.get(f"/api/v1/models/house-price/versions/{version.number}/bundle?flavor=tflite")
    assert bad.status_code == HTTPStatus.BAD_REQUEST and "flavor" in bad.json()["error"]


def test_an_environment_without_skl2onnx_says_not_converted(settings, tmp_path):
    """The converter in an environment of the model's pins alone (no skl2onnx)."""
    reqs = envs.resolve_requirements("1.5.2", 1, "pickle")
    env = envs.ensure_env(
        reqs, root=dj_settings.PORTAL_ENV_CACHE, wheelhouse=dj_settings.PORTAL_WHEELHOUSE
    )
    assert "skl2onnx" not in env.frozen
    dest = tmp_path / "model.onnx"
    result = sandbox.run_inspection(
        FIXTURE_DIR / "house_price_linreg.pkl",
        fmt="pickle",
        env=env,
        example=[[1500, 3, 2]],
        allowlist=envs.ensure_allowlist(env),
        script_path=onnx_export.CONVERT_SCRIPT,
        extra_options={
            "schema": {"n_features": 3},
            "tolerance": 1e-4,
            "sample_rows": 10,
            "opsets": list(onnx_export.OPSETS),
        },  # fmt: skip
        output=("model.onnx", dest),
    )
    assert result["status"] == "not converted"
    assert "skl2onnx/onnxruntime are not installed" in result["reason"]
    assert not dest.exists()


@pytest.mark.django_db
def test_the_version_page_shows_the_onnx_report(role_client):
    from models_app.models import RegisteredModel

    model = RegisteredModel.objects.create(name="iris")
    converted = {
        "status": "converted", "reason": "", "opset": {"": 17, "ai.onnx.ml": 3},
        "max_delta": 4.17e-07, "tolerance": 1e-4, "rows_checked": 203, "example_rows": 3,
        "labels_identical": True, "sha256": "ab" * 32, "size": 41434, "seconds": 2.9,
        "pins": dict(onnx_export.ONNX_PINS),
    }  # fmt: skip
    refused = {"status": "not converted", "tolerance": 1e-4,
               "reason": "skl2onnx cannot convert this model: only tokenizer='word'"}  # fmt: skip
    for number, onnx in ((1, converted), (2, refused), (3, None)):
        ModelVersion.objects.create(
            model=model, number=number, status="ready", artifact_sha256=f"{number}" * 64,
            artifact_size=1, report={"steps": [], **({"onnx": onnx} if onnx else {})},
        )  # fmt: skip
    viewer = role_client("viewer")
    html = viewer.get("/models/iris/versions/1/").content.decode()
    assert 'id="onnx-status">converted</span>' in html
    assert "4.17e-07 (tolerance 0.0001" in html and "float32" in html
    assert "/api/v1/models/iris/versions/1/bundle?flavor=onnx" in html
    html = viewer.get("/models/iris/versions/2/").content.decode()
    assert 'id="onnx-status">not converted</span>' in html and "tokenizer=&#x27;word&#x27;" in html
    assert "flavor=onnx" not in html
    assert 'id="onnx"' not in viewer.get("/models/iris/versions/3/").content.decode()


TRAIN_WORD_TFIDF = """
import sys, joblib, pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
texts = ["win money now", "cheap pills online", "meeting at noon", "lunch tomorrow?",
         "win a free prize", "project notes attached", "free money offer", "see you at noon"]
labels = [1, 1, 0, 0, 1, 0, 1, 0]
model = Pipeline([("features", ColumnTransformer([("content", TfidfVectorizer(), "content")])),
                  ("clf", LogisticRegression())])
model.fit(pd.DataFrame({"content": texts}), labels)
joblib.dump(model, sys.argv[1])
"""


def test_a_word_tfidf_pipeline_converts_with_the_locale_option(tmp_path):
    """The text-vectorizer pitfall: the converter's default locale (en_US) is not in the
    sandbox's minimal root; onnx_convert passes locale "C" and sklearn's token pattern."""
    reqs = {**envs.resolve_requirements("1.9.1", 2, "joblib"), **onnx_export.ONNX_PINS}
    env = envs.ensure_env(
        reqs, root=dj_settings.PORTAL_ENV_CACHE, wheelhouse=dj_settings.PORTAL_WHEELHOUSE
    )
    model = tmp_path / "text.joblib"
    subprocess.run([str(env.python), "-c", TRAIN_WORD_TFIDF, str(model)], check=True, timeout=120)
    dest = tmp_path / "model.onnx"
    result = sandbox.run_inspection(
        model,
        fmt="joblib",
        env=env,
        example=[["win free money"], ["notes for the meeting"]],
        columns=["content"],
        allowlist=envs.ensure_allowlist(env),
        script_path=onnx_export.CONVERT_SCRIPT,
        extra_options={
            "schema": {
                "columns": ["content"],
                "column_types": {"content": "string"},
                "n_features": 1,
            },
            "tolerance": 1e-4,
            "sample_rows": 50,
            "opsets": list(onnx_export.OPSETS),
        },  # fmt: skip
        output=("model.onnx", dest),
    )
    assert result["status"] == "converted", result.get("reason") or result
    assert result["labels_identical"] is True and result["max_delta"] <= 1e-4
    assert result["inputs"] == [{"name": "content", "kind": "string"}]
    assert dest.stat().st_size > 0


def _convert_house(tmp_path, *, tolerance: float, opsets: list) -> tuple[dict, object]:
    reqs = {**envs.resolve_requirements("1.5.2", 1, "pickle"), **onnx_export.ONNX_PINS}
    env = envs.ensure_env(
        reqs, root=dj_settings.PORTAL_ENV_CACHE, wheelhouse=dj_settings.PORTAL_WHEELHOUSE
    )
    dest = tmp_path / "model.onnx"
    result = sandbox.run_inspection(
        FIXTURE_DIR / "house_price_linreg.pkl",
        fmt="pickle",
        env=env,
        example=[[1500, 3, 2], [2500, 4, 3]],
        allowlist=envs.ensure_allowlist(env),
        script_path=onnx_export.CONVERT_SCRIPT,
        extra_options={
            "schema": {"n_features": 3},
            "tolerance": tolerance,
            "sample_rows": 20,
            "opsets": opsets,
        },  # fmt: skip
        output=("model.onnx", dest),
    )
    return result, dest


def test_the_parity_gate_fails_a_tolerance_below_float32_and_opsets_fall_back(tmp_path):
    result, dest = _convert_house(tmp_path, tolerance=0.0, opsets=list(onnx_export.OPSETS))
    assert result["status"] == "failed parity", result
    assert 0 < result["max_delta"] < 1e-5 and "exceeds the tolerance 0" in result["reason"]
    assert not dest.exists()  # a model that fails the gate is not kept
    # An opset set the converter refuses is followed by the next one, and noted.
    result, dest = _convert_house(
        tmp_path, tolerance=1e-4, opsets=[{"": 99, "ai.onnx.ml": 3}, onnx_export.OPSETS[0]]
    )
    assert result["status"] == "converted", result
    assert result["opset"] == onnx_export.OPSETS[0] and len(result["notes"]) == 1
    assert dest.stat().st_size > 0
