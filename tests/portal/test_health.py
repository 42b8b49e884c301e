"""/healthz and /readyz against real services."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from tests.services import redis_server

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == HTTPStatus.OK
    assert response.json() == {"status": "ok"}


def test_readyz_names_every_check(client):
    body = client.get("/readyz").json()
    assert set(body["checks"]) >= {"database", "broker", "artifact_storage", "runtime"}


def test_readyz_follows_a_real_redis_going_down_and_up(client, settings, tmp_path):
    with redis_server(tmp_path) as (port, proc):
        settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{port}/0"
        settings.CELERY_BROKER_TRANSPORT_OPTIONS = {}
        up = client.get("/readyz")
        assert up.json()["checks"]["broker"]["ok"] is True, up.json()
        proc.terminate()
        proc.wait(timeout=10)
        down = client.get("/readyz")
        assert down.status_code == HTTPStatus.SERVICE_UNAVAILABLE
        body = down.json()
        assert body["status"] == "not ready"
        assert body["checks"]["broker"]["ok"] is False
        assert body["checks"]["database"]["ok"] is True


def test_readyz_is_ready_when_every_dependency_answers(client):
    response = client.get("/readyz")
    assert response.status_code == HTTPStatus.OK, response.json()
    assert response.json()["checks"]["database"]["ok"]
