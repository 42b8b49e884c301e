"""Users and roles inside the portal (issue 12): the admin-only users page, its services, and
the audit events of changes made there and in Django's /admin/."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from portal import users
from portal.audit import Actor
from portal.errors import ApplicationError, ConflictError
from portal.models import AuditEvent
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db
User = get_user_model()
NEW_PASSWORD = "a-much-longer-passphrase-42"


def _logs_in(username: str, password: str) -> bool:
    """Through the login page (django-axes wants the request that Client.login lacks)."""
    response = Client().post(reverse("login"), {"username": username, "password": password})
    return response.status_code == HTTPStatus.FOUND


def test_the_users_page_lists_users_with_their_roles(role_client, make_user):
    make_user("approver", username="alice")
    make_user(None, username="bob")
    client = role_client("admin")
    response = client.get(reverse("user-list"))
    assert response.status_code == HTTPStatus.OK
    rows = dict((u.username, roles) for u, roles in response.context["rows"])
    assert rows["alice"] == ["approver"] and rows["bob"] == []
    assert rows[client.user.username] == ["admin"]
    assert 'href="/users/"' in response.content.decode()  # the nav link, for admins


@pytest.mark.parametrize("who", ["viewer", "deployer", "approver"])
def test_only_admins_see_the_users_page(role_client, who):
    client = role_client(who)
    assert client.get(reverse("user-list")).status_code == HTTPStatus.FORBIDDEN
    assert 'href="/users/"' not in client.get(reverse("home")).content.decode()


def test_admin_creates_a_user_with_roles_and_it_is_audited(role_client):
    client = role_client("admin")
    response = client.post(
        reverse("user-list"),
        {"username": "carol", "password": NEW_PASSWORD, "roles": ["deployer", "viewer"]},
    )
    assert response.status_code == HTTPStatus.FOUND
    carol = User.objects.get(username="carol")
    assert carol.check_password(NEW_PASSWORD)
    assert sorted(carol.groups.values_list("name", flat=True)) == ["deployer", "viewer"]
    event = AuditEvent.objects.get(action="user.created")
    assert event.target_name == "carol" and event.details["roles"] == ["deployer", "viewer"]
    assert event.actor_name == client.user.username
    assert _logs_in("carol", NEW_PASSWORD)


def test_a_weak_password_or_a_taken_name_is_refused(role_client, make_user):
    make_user(username="dave")
    client = role_client("admin")
    weak = client.post(reverse("user-list"), {"username": "erin", "password": "123"})
    assert weak.status_code == HTTPStatus.BAD_REQUEST
    assert not User.objects.filter(username="erin").exists()
    taken = client.post(reverse("user-list"), {"username": "dave", "password": NEW_PASSWORD})
    assert (
        taken.status_code == HTTPStatus.BAD_REQUEST and "exists already" in taken.content.decode()
    )
    assert not AuditEvent.objects.filter(action="user.created").exists()


def test_admin_changes_roles_and_it_is_audited(role_client, make_user):
    alice = make_user("viewer", username="alice")
    other = Group.objects.create(name="not-a-role")
    alice.groups.add(other)
    client = role_client("admin")
    response = client.post(reverse("user-roles", args=[alice.pk]), {"roles": ["approver"]})
    assert response.status_code == HTTPStatus.FOUND
    names = set(alice.groups.values_list("name", flat=True))
    assert names == {"approver", "not-a-role"}  # groups that are not roles are left alone
    event = AuditEvent.objects.get(action="user.roles_changed")
    assert event.details == {"from": ["viewer"], "to": ["approver"]}
    # The same roles again change nothing and write nothing.
    client.post(reverse("user-roles", args=[alice.pk]), {"roles": ["approver"]})
    assert AuditEvent.objects.filter(action="user.roles_changed").count() == 1


def test_an_unknown_role_is_refused_by_the_service(make_user):
    with pytest.raises(ApplicationError, match="unknown role"):
        users.user_roles_set(user=make_user(), roles=["root"], actor=Actor.system())


def test_admin_deactivates_and_reactivates_a_user_and_it_is_audited(role_client, make_user):
    alice = make_user("deployer", username="alice")
    client = role_client("admin")
    client.post(reverse("user-active", args=[alice.pk]), {"active": "0"})
    alice.refresh_from_db()
    assert not alice.is_active
    assert AuditEvent.objects.filter(action="user.deactivated", target_name="alice").exists()
    assert not _logs_in("alice", PASSWORD)
    client.post(reverse("user-active", args=[alice.pk]), {"active": "1"})
    alice.refresh_from_db()
    assert alice.is_active
    assert AuditEvent.objects.filter(action="user.reactivated", target_name="alice").exists()


def test_an_admin_cannot_deactivate_themselves(make_user):
    admin = make_user("admin")
    with pytest.raises(ConflictError):
        users.user_active_set(
            user=admin, active=False, actor=Actor(id=admin.pk, name=admin.username)
        )
    admin.refresh_from_db()
    assert admin.is_active


def test_admin_sets_a_password_and_it_is_audited(role_client, make_user):
    alice = make_user("viewer", username="alice")
    client = role_client("admin")
    client.post(reverse("user-password", args=[alice.pk]), {"password": NEW_PASSWORD})
    alice.refresh_from_db()
    assert alice.check_password(NEW_PASSWORD)
    event = AuditEvent.objects.get(action="user.password_changed")
    assert event.target_name == "alice" and NEW_PASSWORD not in str(event.details)


def test_a_missing_user_is_a_404(role_client):
    response = role_client("admin").post(reverse("user-roles", args=[99999]), {"roles": []})
    assert response.status_code == HTTPStatus.NOT_FOUND


# --------------------------------------------------------------------------- Django's /admin/


@pytest.fixture
def superuser_client(make_user):
    admin = make_user("admin", username="root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    return client


def _change_data(user, **changes):
    data = {
        "username": user.username,
        "first_name": "",
        "last_name": "",
        "email": "",
        "is_active": "on",
        "groups": [g.pk for g in user.groups.all()],
        "user_permissions": [],
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "last_login_0": "",
        "last_login_1": "",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_role_changes_in_django_admin_are_audited(superuser_client, make_user):
    alice = make_user("viewer", username="alice")
    approver = Group.objects.get_or_create(name="approver")[0]  # a flushed db has no groups
    url = reverse("admin:auth_user_change", args=[alice.pk])
    response = superuser_client.post(url, _change_data(alice, groups=[approver.pk]))
    assert response.status_code == HTTPStatus.FOUND, response.context["adminform"].form.errors
    assert list(alice.groups.values_list("name", flat=True)) == ["approver"]
    event = AuditEvent.objects.get(action="user.roles_changed")
    assert event.details == {"from": ["viewer"], "to": ["approver"]}
    assert event.actor_name == "root"


def test_deactivating_in_django_admin_is_audited(superuser_client, make_user):
    alice = make_user("viewer", username="alice")
    url = reverse("admin:auth_user_change", args=[alice.pk])
    response = superuser_client.post(url, _change_data(alice, is_active=None))
    assert response.status_code == HTTPStatus.FOUND
    assert AuditEvent.objects.filter(action="user.deactivated", target_name="alice").exists()
    assert not AuditEvent.objects.filter(action="user.roles_changed").exists()


def test_password_changes_in_django_admin_are_audited(superuser_client, make_user):
    alice = make_user("viewer", username="alice")
    url = reverse("admin:auth_user_password_change", args=[alice.pk])
    response = superuser_client.post(
        url, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"}
    )
    assert response.status_code == HTTPStatus.FOUND
    alice.refresh_from_db()
    assert alice.check_password(NEW_PASSWORD)
    event = AuditEvent.objects.get(action="user.password_changed")
    assert event.target_name == "alice" and event.actor_name == "root"
    # A refused form (mismatch) changes nothing and writes nothing.
    superuser_client.post(url, {"password1": NEW_PASSWORD, "password2": "different-one-99"})
    assert AuditEvent.objects.filter(action="user.password_changed").count() == 1


def test_creating_a_user_in_django_admin_is_audited(superuser_client):
    response = superuser_client.post(
        reverse("admin:auth_user_add"),
        {
            "username": "frank",
            "password1": NEW_PASSWORD,
            "password2": NEW_PASSWORD,
            "usable_password": "true",
        },
    )
    assert response.status_code == HTTPStatus.FOUND
    event = AuditEvent.objects.get(action="user.created")
    assert event.target_name == "frank" and event.details == {"via": "admin"}


# --------------------------------------------------------------------------- API


def test_the_users_api_lists_creates_and_changes_users_each_audited(api_client):
    client = api_client("admin")
    created = client.post(
        "/api/v1/users",
        {"username": "gina", "password": NEW_PASSWORD, "roles": ["viewer"]},
        format="json",
    )
    assert created.status_code == HTTPStatus.CREATED, created.content
    body = created.json()
    assert body["roles"] == ["viewer"] and "password" not in body
    assert AuditEvent.objects.filter(action="user.created", target_name="gina").exists()
    listed = {u["username"]: u["roles"] for u in client.get("/api/v1/users").json()}
    assert listed["gina"] == ["viewer"]

    url = f"/api/v1/users/{body['id']}"
    changed = client.patch(url, {"roles": ["deployer"]}, format="json")
    assert changed.json()["roles"] == ["deployer"]
    assert AuditEvent.objects.filter(action="user.roles_changed").exists()
    changed = client.patch(url, {"is_active": False}, format="json")
    assert changed.json()["is_active"] is False
    assert AuditEvent.objects.filter(action="user.deactivated").exists()
    client.patch(url, {"password": "another-long-passphrase-7"}, format="json")
    assert AuditEvent.objects.filter(action="user.password_changed").exists()
    refused = client.patch(url, {"roles": ["root"]}, format="json")
    assert refused.status_code == HTTPStatus.BAD_REQUEST


@pytest.mark.parametrize("who", ["viewer", "deployer", "approver"])
def test_the_users_api_is_for_admins_only(api_client, who):
    assert api_client(who).get("/api/v1/users").status_code == HTTPStatus.FORBIDDEN


def test_a_username_equal_after_unicode_normalization_is_a_conflict_not_a_500(api_client):
    """create_user stores the NFKC form: the check for an existing name must look for it
    (the fuzzer found a 500 when a generated name normalised to one that existed)."""
    admin = api_client("admin")
    body = {"username": "file", "password": "a-long-enough-passphrase-1", "roles": ["viewer"]}
    assert admin.post("/api/v1/users", body, format="json").status_code == 201
    again = admin.post("/api/v1/users", {**body, "username": "\ufb01le"}, format="json")
    assert again.status_code == 409, again.content
