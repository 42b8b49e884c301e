"""The registry end to end: real uploads, a real Celery worker, real sandboxed validation."""

from __future__ import annotations

import json
from http import HTTPStatus

import numpy as np
import pytest

from models_app.models import ModelVersion
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR, wait_for

FIXTURES = [
    "house_price_linreg.pkl",
    "breast_cancer_svc.joblib",
    "iris_rf_sklearn13.joblib",
    "spam_pipeline.joblib",
    "diabetes_gbr.skops",
]


def _wait_validated(model: str, number: int = 1) -> ModelVersion:
    def done():
        v = ModelVersion.objects.filter(model__name=model, number=number).first()
        return v if v and v.status in ("ready", "invalid") else None

    return wait_for(done, timeout=600, what=f"{model} v{number} to be validated")


def _check_against_manifest(version: ModelVersion, entry: dict) -> None:
    assert version.status == "ready", version.rejection_reason
    assert version.sklearn_version == entry["sklearn_version"]
    assert version.python_requirements["scikit-learn"] == entry["sklearn_version"]
    assert version.format == entry["format"]
    assert version.schema["n_features"] == len(entry["input_example"][0])
    if entry["columns"]:
        assert version.schema["columns"] == entry["columns"]
    predictions = version.example_output["predictions"]
    if entry["task"] == "regression":
        assert np.allclose(predictions, entry["expected_predict"])
    else:
        assert predictions == entry["expected_predict"]
    if entry.get("expected_predict_proba"):
        assert np.allclose(version.example_output["probabilities"], entry["expected_predict_proba"])


@pytest.mark.slow
@pytest.mark.parametrize("filename", FIXTURES)
def test_fixture_uploads_through_the_api_validate_ready(
    transactional_db, worker_storage, api_client, manifest, filename
):
    entry = manifest[filename]
    client = api_client("deployer")
    with open(FIXTURE_DIR / filename, "rb") as fh:
        response = client.post(
            f"/api/v1/models/{entry['name']}/versions",
            {
                "file": fh,
                "input_example": json.dumps(entry["input_example"]),
                "description": entry["notes"],
                "tags": "fixture,test",
            },
            format="multipart",
        )
    assert response.status_code == HTTPStatus.CREATED, response.content
    assert response.json()["status"] == "uploaded"
    version = _wait_validated(entry["name"])
    _check_against_manifest(version, entry)
    detail = client.get(f"/api/v1/models/{entry['name']}/versions/1").json()
    assert detail["status"] == "ready"
    steps = detail["report"]["steps"]
    assert [s["key"] for s in steps] == [
        "scan", "versions", "environment", "allowlist", "load", "smoke"
    ]  # fmt: skip
    assert all(s["ok"] for s in steps)
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"model.created", "model_version.uploaded", "model_version.ready"} <= actions
    # The same bytes again: the existing version comes back, no duplicate.
    with open(FIXTURE_DIR / filename, "rb") as fh:
        again = client.post(
            f"/api/v1/models/{entry['name']}/versions", {"file": fh}, format="multipart"
        )
    assert again.status_code == HTTPStatus.OK
    assert again.json()["number"] == 1
    assert ModelVersion.objects.filter(model__name=entry["name"]).count() == 1


@pytest.mark.slow
@pytest.mark.parametrize("filename", FIXTURES)
def test_fixture_uploads_through_the_browser_form_validate_ready(
    transactional_db, worker_storage, role_client, manifest, filename
):
    entry = manifest[filename]
    client = role_client("deployer")
    with open(FIXTURE_DIR / filename, "rb") as fh:
        response = client.post(
            "/models/upload/",
            {
                "model_name": entry["name"],
                "file": fh,
                "input_example": json.dumps(entry["input_example"]),
            },
            HTTP_ACCEPT="application/json",
        )
    assert response.status_code == HTTPStatus.OK, response.content
    assert response.json()["redirect"] == f"/models/{entry['name']}/versions/1/"
    version = _wait_validated(entry["name"])
    _check_against_manifest(version, entry)
    page = client.get(response.json()["redirect"])
    assert page.status_code == HTTPStatus.OK
    assert b"Validation report" in page.content
    assert entry["sklearn_version"].encode() in page.content


@pytest.mark.slow
def test_iris_without_example_gets_a_synthetic_smoke_row(
    transactional_db, worker_storage, api_client
):
    client = api_client("deployer")
    with open(FIXTURE_DIR / "iris_rf_sklearn13.joblib", "rb") as fh:
        client.post("/api/v1/models/iris-plain/versions", {"file": fh}, format="multipart")
    version = _wait_validated("iris-plain")
    assert version.status == "ready", version.rejection_reason
    assert len(version.example_output["predictions"]) == 1
    assert version.schema["columns"] == [
        "sepal length (cm)",
        "sepal width (cm)",
        "petal length (cm)",
        "petal width (cm)",
    ]
