"""A key is bound to deployments, not to their names: deleting one leaves the key scoped to
nothing (and says so on the keys page); a new deployment of the same name needs a new key."""

from __future__ import annotations

import time

import pytest

from deployments_app import services
from deployments_app.models import Deployment
from deployments_app.predict import keys, proxy
from models_app.models import ModelVersion, RegisteredModel
from portal.audit import Actor

pytestmark = [pytest.mark.security, pytest.mark.django_db]


def _deployment(name: str) -> Deployment:
    model, _ = RegisteredModel.objects.get_or_create(name="m")
    version, _ = ModelVersion.objects.get_or_create(
        model=model,
        number=1,
        defaults={"status": "ready", "artifact_sha256": "0" * 64, "artifact_size": 1},
    )
    return Deployment.objects.create(
        name=name, model=model, version=version, runtime="process", state="stopped"
    )


def _call(client, raw: str):
    return client.post(
        "/api/v1/deployments/d/predict",
        data={"features": [1, 2, 3]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )


def test_key_of_a_deleted_deployment_does_not_open_its_successor(role_client):
    browser = role_client("deployer")
    first = _deployment("d")
    _, raw = keys.api_key_create(
        user=browser.user, actor=Actor.system(), name="old", deployment_names=["d"]
    )
    answer = _call(browser, raw)
    assert answer.status_code == 503 and answer.json()["state"] == "stopped"  # the key works

    services.deployment_delete(deployment=first, actor=Actor.system())
    _deployment("d")  # same name, new deployment
    time.sleep(proxy.TARGET_TTL + 0.2)  # how long a web process trusts what it read
    answer = _call(browser, raw)
    assert answer.status_code == 404, answer.content
    assert "no deployment named" in answer.json()["error"]

    page = browser.get("/keys/")
    assert page.status_code == 200
    assert "nothing: its deployments were deleted" in page.content.decode()
