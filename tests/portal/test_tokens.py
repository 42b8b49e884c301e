"""Personal access tokens: created within the owner's roles, shown once, limited to their
scopes, refused (401) when expired or revoked, basic auth switchable (#20)."""

from __future__ import annotations

import base64
import io
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from deployments_app.predict import keys
from portal.audit import Actor
from portal.models import AccessToken, AuditEvent
from portal.tokens import access_token_create
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def _bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _token(user, scopes, **kwargs) -> str:
    return access_token_create(user=user, actor=Actor.system(), name="t", scopes=scopes, **kwargs)[
        1
    ]


def test_create_through_the_api_shows_the_token_once_and_audits(api_client):
    client = api_client("deployer")
    response = client.post(
        "/api/v1/tokens", {"name": "ci", "scopes": ["upload", "read"]}, format="json"
    )
    assert response.status_code == HTTPStatus.CREATED, response.content
    body = response.json()
    assert body["token"].startswith(f"pt_{body['prefix']}_")
    assert body["scopes"] == ["read", "upload"]
    row = AccessToken.objects.get(prefix=body["prefix"])
    assert body["token"] not in row.token_hash and len(row.token_hash) == 64
    listed = client.get("/api/v1/tokens").json()
    assert [t["prefix"] for t in listed] == [body["prefix"]]
    assert "token" not in listed[0]
    event = AuditEvent.objects.get(action="token.created")
    assert event.details["scopes"] == ["read", "upload"]
    assert event.actor_name == client.user.username


def test_viewer_cannot_create_an_upload_scoped_token(api_client):
    response = api_client("viewer").post(
        "/api/v1/tokens", {"name": "x", "scopes": ["upload"]}, format="json"
    )
    assert response.status_code == HTTPStatus.FORBIDDEN
    assert "upload" in response.json()["error"]
    assert not AccessToken.objects.exists()


def test_unknown_scope_is_a_400(api_client):
    response = api_client("admin").post(
        "/api/v1/tokens", {"name": "x", "scopes": ["root"]}, format="json"
    )
    assert response.status_code == HTTPStatus.BAD_REQUEST


def test_read_scoped_token_reads_but_cannot_upload(make_user):
    client = _bearer(_token(make_user("deployer"), ["read"]))
    assert client.get("/api/v1/models").status_code == HTTPStatus.OK
    upload = client.post(
        "/api/v1/models/m/versions", {"file": io.BytesIO(b"\x80\x04N.")}, format="multipart"
    )
    assert upload.status_code == HTTPStatus.FORBIDDEN
    assert client.post("/api/v1/keys", {"name": "k"}, format="json").status_code == 403


def test_token_is_limited_by_the_owners_roles_too(make_user):
    user = make_user("deployer")
    raw = _token(user, ["upload"])
    user.groups.clear()  # roles taken away after the token was made
    assert _bearer(raw).get("/api/v1/models").status_code == HTTPStatus.FORBIDDEN


def test_a_token_cannot_mint_a_broader_token(make_user):
    client = _bearer(_token(make_user("admin"), ["read"]))
    response = client.post("/api/v1/tokens", {"name": "x", "scopes": ["admin"]}, format="json")
    assert response.status_code == HTTPStatus.FORBIDDEN
    assert AccessToken.objects.count() == 1


def test_admin_scope_opens_admin_endpoints(make_user):
    user = make_user("admin")
    assert _bearer(_token(user, ["admin"])).get("/api/v1/users").status_code == HTTPStatus.OK
    assert _bearer(_token(user, ["deploy"])).get("/api/v1/users").status_code == 403


def test_expired_token_is_refused_with_401(make_user):
    user = make_user("viewer")
    raw = _token(user, ["read"], expires_at=timezone.now() + timedelta(hours=1))
    assert _bearer(raw).get("/api/v1/models").status_code == HTTPStatus.OK
    AccessToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = _bearer(raw).get("/api/v1/models")
    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert "expired" in response.json()["error"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_expiry_in_the_past_is_refused(api_client):
    response = api_client("viewer").post(
        "/api/v1/tokens",
        {"name": "x", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"},
        format="json",
    )
    assert response.status_code == HTTPStatus.BAD_REQUEST


def test_revoked_token_is_refused_and_revoke_is_audited(make_user):
    user = make_user("viewer")
    raw = _token(user, ["read"])
    prefix = AccessToken.objects.get().prefix
    client = _bearer(raw)
    revoked = client.delete(f"/api/v1/tokens/{prefix}")
    assert revoked.status_code == HTTPStatus.OK
    assert revoked.json()["revoked_at"] is not None
    assert client.get("/api/v1/models").status_code == HTTPStatus.UNAUTHORIZED
    assert (
        AuditEvent.objects.filter(action="token.revoked", target_name__contains=prefix).count() == 1
    )


def test_others_tokens_cannot_be_revoked(make_user, api_client):
    _token(make_user("viewer"), ["read"])
    prefix = AccessToken.objects.get().prefix
    assert api_client("admin").delete(f"/api/v1/tokens/{prefix}").status_code == 404
    assert AccessToken.objects.get().revoked_at is None


def test_wrong_secret_and_garbage_are_401(make_user):
    raw = _token(make_user("viewer"), ["read"])
    assert _bearer(raw[:-2] + "xx").get("/api/v1/models").status_code == 401
    assert _bearer("pt_nothing").get("/api/v1/models").status_code == 401


def test_last_used_at_is_written(make_user):
    raw = _token(make_user("viewer"), ["read"])
    assert AccessToken.objects.get().last_used_at is None
    _bearer(raw).get("/api/v1/models")
    assert AccessToken.objects.get().last_used_at is not None


def test_prediction_keys_do_not_authenticate_the_control_plane(make_user):
    from deployments_app.models import Deployment
    from models_app.models import ModelVersion, RegisteredModel

    owner = make_user("deployer")
    model = RegisteredModel.objects.create(name="m")
    version = ModelVersion.objects.create(
        model=model, number=1, status="ready", artifact_sha256="1" * 64, artifact_size=1
    )
    Deployment.objects.create(name="d", model=model, version=version, runtime="process")
    _, raw = keys.api_key_create(user=owner, actor=Actor.system(), name="k", deployment_names=["d"])
    assert _bearer(raw).get("/api/v1/models").status_code == HTTPStatus.FORBIDDEN


def _basic(user) -> dict[str, str]:
    value = base64.b64encode(f"{user.username}:{PASSWORD}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {value}"}


def test_basic_auth_can_be_turned_off(make_user, settings):
    user = make_user("viewer")
    client = Client()
    assert client.get("/api/v1/models", **_basic(user)).status_code == HTTPStatus.OK
    settings.PORTAL_API_BASIC_AUTH = False
    assert client.get("/api/v1/models", **_basic(user)).status_code == HTTPStatus.FORBIDDEN
    raw = _token(user, ["read"])
    assert _bearer(raw).get("/api/v1/models").status_code == HTTPStatus.OK


def test_token_page_creates_shows_once_and_revokes(role_client):
    client = role_client("viewer")
    page = client.get("/tokens/")
    assert page.status_code == HTTPStatus.OK
    assert 'value="upload"' not in page.content.decode()  # a viewer is offered read only
    created = client.post("/tokens/", {"name": "laptop", "scopes": ["read"]}, follow=True)
    assert created.status_code == HTTPStatus.OK
    token = AccessToken.objects.get()
    assert f"pt_{token.prefix}_" in created.content.decode()
    again = client.get("/tokens/").content.decode()
    assert f"pt_{token.prefix}_" not in again  # shown once
    client.post(f"/tokens/{token.prefix}/revoke")
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_malformed_prefixes_are_answered_without_a_query(api_client):
    client = api_client("viewer")
    assert client.delete("/api/v1/tokens/ab%00cd").status_code == HTTPStatus.NOT_FOUND
    assert _bearer("pt_ab\x00cd_secret").get("/api/v1/models").status_code == 401
