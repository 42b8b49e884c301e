"""The capture policy (validation, redaction, HMAC), retention of captured records and their
export, against the real database; no model containers needed."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.utils import timezone

from deployments_app.models import CapturePolicy, Deployment, PredictionLog
from deployments_app.monitoring import capture, services
from deployments_app.predict import logwriter
from models_app.models import ModelVersion, RegisteredModel
from portal.audit import Actor
from portal.errors import ApplicationError
from portal.models import AuditEvent
from tests.deployments_app.test_rollups import log_row

pytestmark = pytest.mark.django_db

SCHEMA = {
    "columns": ["name", "email", "age", "note"],
    "column_types": {"name": "string", "email": "string", "age": "number", "note": "string"},
    "n_features": 4,
}


@pytest.fixture
def deployment():
    model = RegisteredModel.objects.create(name="people")
    version = ModelVersion.objects.create(
        model=model, number=1, status="ready", artifact_sha256="a" * 64, artifact_size=1,
        schema=SCHEMA, task="classification",
    )  # fmt: skip
    return Deployment.objects.create(
        name="people", model=model, version=version, runtime="docker", state="running"
    )


def test_unknown_column_is_refused_with_its_name():
    with pytest.raises(ApplicationError) as info:
        capture.validate_fields({"emial": "mask"}, SCHEMA)
    assert "emial" in info.value.message and info.value.extra == {"field": "emial"}
    with pytest.raises(ApplicationError, match="action"):
        capture.validate_fields({"email": "encrypt"}, SCHEMA)
    with pytest.raises(ApplicationError, match="unknown column '/4'"):
        capture.validate_fields({"/4": "drop"}, SCHEMA)
    assert capture.validate_fields({"/3": "drop", "note": "truncate"}, SCHEMA) == {
        "/3": {"action": "drop"},
        "note": {"action": "truncate", "length": capture.DEFAULT_LENGTH},
    }


def test_hash_is_hmac_sha256_under_a_key_derived_from_the_secret_and_stable(settings):
    settings.SECRET_KEY = "k" * 50
    key = hashlib.sha256(capture.KEY_LABEL + settings.SECRET_KEY.encode()).digest()
    expected = hmac.new(key, b"ann@example.com", hashlib.sha256).hexdigest()
    assert capture.hash_value("ann@example.com") == expected
    assert capture.hash_value("ann@example.com") == expected  # stable: records stay joinable
    assert capture.hash_value("bob@example.com") != expected
    assert capture.hash_value("ann@example.com") != hashlib.sha256(b"ann@example.com").hexdigest()
    settings.SECRET_KEY = "j" * 50
    assert capture.hash_value("ann@example.com") != expected  # keyed: not a plain digest


def test_record_drops_masks_hashes_truncates_and_carries_the_policy_version():
    compiled = capture.compile_policy(
        version=3, inputs=True, outputs=True, schema=SCHEMA,
        fields=capture.validate_fields(
            {"name": "drop", "email": "hash", "age": "mask",
             "note": {"action": "truncate", "length": 4}, "/outputs/probabilities": "drop"},
            SCHEMA,
        ),
    )  # fmt: skip
    rows = [["Ann", "ann@example.com", 41, "a long note"]]
    record = compiled.record(rows, {"predictions": [1], "probabilities": [[0.2, 0.8]]})
    assert record == {
        "policy": 3,
        "columns": ["email", "age", "note"],
        "inputs": [[capture.hash_value("ann@example.com"), capture.MASK, "a lo"]],
        "outputs": {"predictions": [1]},
    }
    assert rows == [["Ann", "ann@example.com", 41, "a long note"]]  # the call's rows untouched
    only_outputs = capture.compile_policy(
        version=1, inputs=False, outputs=True, fields={}, schema=SCHEMA
    ).record(rows, {"predictions": [1]})
    assert only_outputs == {"policy": 1, "outputs": {"predictions": [1]}}


def test_policy_set_through_the_api_is_validated_versioned_and_audited(deployment, role_client):
    deployer = role_client("deployer")
    url = f"/api/v1/deployments/{deployment.name}/capture"
    bad = deployer.put(url, {"percent": 50, "fields": {"emial": "hash"}}, "application/json")
    assert bad.status_code == HTTPStatus.BAD_REQUEST and "emial" in bad.json()["error"]
    body = {"percent": 50, "fields": {"email": "hash"}, "retention_days": 3}
    ok = deployer.put(url, body, "application/json")
    assert ok.status_code == HTTPStatus.OK, ok.content
    assert ok.json()["version"] == 1 and ok.json()["fields"] == {"email": {"action": "hash"}}
    changed = deployer.put(url, {**body, "fields": {"email": "mask"}}, "application/json")
    assert changed.json()["version"] == 2
    deployment.refresh_from_db()
    assert deployment.capture_percent == 50
    assert CapturePolicy.objects.get(deployment=deployment).retention_days == 3
    event = AuditEvent.objects.filter(action="deployment.capture_policy_set").latest("id")
    assert event.details["policy_version"] == 2 and event.actor_name == deployer.user.username
    viewer = role_client("viewer")
    assert viewer.get(url).status_code == HTTPStatus.OK
    assert viewer.put(url, body, "application/json").status_code == HTTPStatus.FORBIDDEN


def test_policy_set_through_the_page_form(deployment, role_client):
    deployer = role_client("deployer")
    response = deployer.post(
        f"/deployments/{deployment.name}/capture",
        {
            "percent": 100,
            "inputs": "on",
            "retention_days": 5,
            "rules": "email=hash\nnote=truncate:8",
        },  # fmt: skip
    )
    assert response.status_code == HTTPStatus.FOUND
    policy = CapturePolicy.objects.get(deployment=deployment)
    assert (policy.inputs, policy.outputs) == (True, False)
    assert policy.fields == {
        "email": {"action": "hash"},
        "note": {"action": "truncate", "length": 8},
    }
    page = deployer.get(f"/deployments/{deployment.name}/")
    assert b'id="capture-form"' in page.content and b"note=truncate:8" in page.content
    deployer.post(
        f"/deployments/{deployment.name}/capture",
        {"percent": 100, "retention_days": 5, "rules": "mail=hash"},
    )
    assert CapturePolicy.objects.get(deployment=deployment).fields == policy.fields  # refused


def _captured(deployment, days_ago: float, values: list) -> None:
    row = log_row(timezone.now() - timedelta(days=days_ago), name=deployment.name)
    row["payload"] = {"policy": 1, "columns": SCHEMA["columns"], "inputs": [values],
                      "outputs": {"predictions": [1]}}  # fmt: skip
    logwriter.write(row)


def test_retention_clears_records_past_the_deployments_window_only(deployment):
    services.capture_policy_set(
        deployment=deployment, actor=Actor.system(), percent=100, retention_days=2
    )
    _captured(deployment, 3, ["old", "o@x", 1, ""])
    _captured(deployment, 0.5, ["new", "n@x", 2, ""])
    cleared = services.capture_retention_run()
    assert cleared == {deployment.name: 1}
    kept = PredictionLog.objects.filter(deployment_name=deployment.name).order_by("created_at")
    assert [r.payload is None for r in kept] == [True, False]  # the log rows themselves stay
    assert AuditEvent.objects.filter(action="capture.retention_applied").exists()
    assert services.capture_retention_run() == {}  # nothing more to clear


def test_export_csv_and_jsonl_is_permission_checked_and_audited(deployment, role_client):
    _captured(deployment, 0.1, ["Ann", "h1", 41, "x"])
    url = f"/api/v1/deployments/{deployment.name}/capture/export"
    assert role_client("viewer").get(url).status_code == HTTPStatus.FORBIDDEN
    assert role_client(None).get(url).status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
    deployer = role_client("deployer")
    lines = b"".join(deployer.get(url + "?format=jsonl").streaming_content).decode().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["inputs"] == [["Ann", "h1", 41, "x"]]
    page = deployer.get(f"/deployments/{deployment.name}/capture/export?format=csv")
    table = list(csv.reader(io.StringIO(b"".join(page.streaming_content).decode())))
    assert table[0][-5:] == ["name", "email", "age", "note", "prediction"]
    assert table[1][-5:] == ["Ann", "h1", "41", "x", "1"]
    assert deployer.get(url + "?format=xml").status_code == HTTPStatus.BAD_REQUEST
    assert AuditEvent.objects.filter(action="deployment.capture_exported").count() == 2
    assert (
        role_client("viewer").get(f"/deployments/{deployment.name}/capture/export").status_code
        == HTTPStatus.FORBIDDEN
    )


def test_beat_schedules_drift_scores_and_capture_retention(settings):
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "deployments_app.tasks.drift_compute" in tasks
    assert "deployments_app.tasks.capture_retention" in tasks


def test_retention_task_runs_the_service(deployment):
    from deployments_app import tasks

    services.capture_policy_set(
        deployment=deployment, actor=Actor.system(), percent=100, retention_days=1
    )
    _captured(deployment, 2, ["old", "o@x", 1, ""])
    tasks.capture_retention()
    assert not PredictionLog.objects.filter(payload__isnull=False).exists()
