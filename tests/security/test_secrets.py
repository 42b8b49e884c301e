"""Secrets never reach the audit log or the application log."""

from __future__ import annotations

import logging

import pytest
from django.urls import reverse

from deployments_app.models import ApiKey, Deployment
from deployments_app.predict import keys
from models_app.models import ModelVersion, RegisteredModel
from portal.audit import Actor
from portal.models import AuditEvent

pytestmark = [pytest.mark.security, pytest.mark.django_db]


def _everything_recorded() -> str:
    return " ".join(str(row) for row in AuditEvent.objects.values())


def test_api_key_is_stored_hashed_and_never_logged_or_audited(make_user, caplog, client):
    caplog.set_level(logging.DEBUG)
    model = RegisteredModel.objects.create(name="m")
    version = ModelVersion.objects.create(
        model=model, number=1, status="ready", artifact_sha256="0" * 64, artifact_size=1
    )
    Deployment.objects.create(
        name="d", model=model, version=version, runtime="process", state="stopped"
    )
    user = make_user("deployer")
    row, raw = keys.api_key_create(
        user=user, actor=Actor.system(), name="k", deployment_names=["d"]
    )
    client.post(
        "/api/v1/deployments/d/predict",
        data={"features": [1, 2, 3]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    secret_part = raw.split("_", 2)[2]
    assert secret_part not in ApiKey.objects.get(pk=row.pk).key_hash
    assert secret_part not in _everything_recorded()
    assert secret_part not in caplog.text
    assert AuditEvent.objects.filter(action="api_key.created").exists()


def test_passwords_are_not_recorded_on_failed_or_good_logins(make_user, caplog, client):
    caplog.set_level(logging.DEBUG)
    make_user("viewer", username="carol")
    client.post(reverse("login"), {"username": "carol", "password": "Wrong-Secret-123"})
    client.post(reverse("login"), {"username": "carol", "password": "correct-horse-battery"})
    recorded = _everything_recorded()
    assert "Wrong-Secret-123" not in recorded and "correct-horse-battery" not in recorded
    assert "Wrong-Secret-123" not in caplog.text
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == 1
