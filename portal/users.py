"""Users and their roles: create, set roles, deactivate, reactivate, set a password.

Roles are the groups portal/roles.py names (made by migration portal 0002). Every change is
audited in its transaction; the pages, the API and the Django admin (portal/admin.py) call
these or the same `user_audit_*` writers, so a change leaves one event wherever it is made.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Prefetch, QuerySet
from django.shortcuts import get_object_or_404

from portal.audit import Actor, audit_record
from portal.errors import ApplicationError, ConflictError
from portal.roles import ROLES

User = get_user_model()


def user_list() -> QuerySet:
    return User.objects.order_by("username").prefetch_related(
        Prefetch("groups", queryset=Group.objects.order_by("name"))
    )


def user_get(*, user_id: int) -> Any:
    return get_object_or_404(user_list(), pk=user_id)


def user_role_names(user: Any) -> list[str]:
    return sorted(g.name for g in user.groups.all() if g.name in ROLES)


def _role_groups(roles: list[str]) -> list[Group]:
    # The groups come from migration portal 0002; made again if someone deleted one.
    return [Group.objects.get_or_create(name=name)[0] for name in roles]


def _check_roles(roles: list[str]) -> list[str]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ApplicationError(f"unknown role(s) {', '.join(unknown)}: use {', '.join(ROLES)}")
    return sorted(set(roles))


def _check_password(password: str, user: Any = None) -> None:
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ApplicationError(" ".join(exc.messages)) from exc


def user_audit_roles_changed(*, actor: Actor, user: Any, before: list[str]) -> None:
    """Audit a role change (when there is one); the caller holds the transaction."""
    after = user_role_names(user)
    if after != before:
        audit_record(
            actor=actor,
            action="user.roles_changed",
            target=user,
            details={"from": before, "to": after},
        )


def user_audit_password_changed(*, actor: Actor, user: Any) -> None:
    audit_record(actor=actor, action="user.password_changed", target=user)


def user_create(
    *, username: str, password: str, roles: list[str], actor: Actor, email: str = ""
) -> Any:
    roles = _check_roles(roles)
    # As create_user stores it (NFKC): "ﬁ" and "fi" are one name, found by the check below.
    username = User.normalize_username(username.strip())
    if not username:
        raise ApplicationError("a user needs a username")
    _check_password(password, User(username=username, email=email))
    with transaction.atomic():
        if User.objects.filter(username=username).exists():
            raise ConflictError(f"a user named '{username}' exists already")
        user = User.objects.create_user(username=username, email=email, password=password)
        user.groups.set(_role_groups(roles))
        audit_record(actor=actor, action="user.created", target=user, details={"roles": roles})
    return user


def user_roles_set(*, user: Any, roles: list[str], actor: Actor) -> Any:
    """Give the user exactly these portal roles (other groups are left alone)."""
    roles = _check_roles(roles)
    with transaction.atomic():
        before = user_role_names(user)
        user.groups.remove(*Group.objects.filter(name__in=set(ROLES) - set(roles)))
        user.groups.add(*_role_groups(roles))
        user = user_get(user_id=user.pk)  # the prefetched groups are stale now
        user_audit_roles_changed(actor=actor, user=user, before=before)
    return user


def user_active_set(*, user: Any, active: bool, actor: Actor) -> Any:
    """Deactivate (the user can no longer log in or use the API) or reactivate."""
    if not active and user.pk == actor.id:
        raise ConflictError("you cannot deactivate yourself")
    with transaction.atomic():
        changed = User.objects.filter(pk=user.pk, is_active=not active).update(is_active=active)
        user.refresh_from_db(fields=["is_active"])
        if changed:
            action = "user.reactivated" if active else "user.deactivated"
            audit_record(actor=actor, action=action, target=user)
    return user


def user_password_set(*, user: Any, password: str, actor: Actor) -> Any:
    _check_password(password, user)
    with transaction.atomic():
        user.set_password(password)
        user.save(update_fields=["password"])
        user_audit_password_changed(actor=actor, user=user)
    return user
