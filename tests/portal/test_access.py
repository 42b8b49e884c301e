"""Each role reaches what it should and nothing else."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.urls import reverse

# page -> roles allowed (anonymous is always redirected to the login page)
PAGES = {
    "home": {"viewer", "deployer", "approver", "admin"},
    "model-list": {"viewer", "deployer", "approver", "admin"},
    "model-upload": {"deployer", "admin"},
    "audit-list": {"admin"},
}
ROLES = ["viewer", "deployer", "approver", "admin", None]


@pytest.mark.django_db
@pytest.mark.parametrize("page", sorted(PAGES))
@pytest.mark.parametrize("role", ROLES)
def test_page_access_by_role(role_client, page, role):
    client = role_client(role)
    response = client.get(reverse(page))
    if role is None:
        assert response.status_code == HTTPStatus.FOUND
        assert reverse("login") in response["Location"]
    elif role in PAGES[page]:
        assert response.status_code == HTTPStatus.OK
    else:
        assert response.status_code == HTTPStatus.FORBIDDEN


@pytest.mark.django_db
def test_user_without_role_sees_nothing(role_client, make_user):
    from django.test import Client

    client = Client()
    client.force_login(make_user(None))
    assert client.get(reverse("home")).status_code == HTTPStatus.FORBIDDEN


@pytest.mark.django_db
@pytest.mark.parametrize(
    "role,expected",
    [(None, HTTPStatus.FORBIDDEN), ("viewer", HTTPStatus.OK), ("admin", HTTPStatus.OK)],
)
def test_api_requires_authentication_and_role(api_client, role, expected):
    response = api_client(role).get("/api/v1/models")
    assert response.status_code == expected


@pytest.mark.django_db
def test_viewer_cannot_upload_through_the_api(api_client, tmp_path):
    client = api_client("viewer")
    response = client.post("/api/v1/models/m/versions", {"file": b"x"}, format="multipart")
    assert response.status_code == HTTPStatus.FORBIDDEN
    assert "error" in response.json()


def test_request_id_is_echoed_or_generated(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="abc12345-req")
    assert response["X-Request-ID"] == "abc12345-req"
    generated = client.get("/healthz", HTTP_X_REQUEST_ID="bad id with spaces\n")
    assert len(generated["X-Request-ID"]) == 32
