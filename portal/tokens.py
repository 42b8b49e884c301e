"""Personal access tokens for the control-plane API: create (shown once), revoke, check.

A token is `pt_<prefix>_<secret>` (prediction API keys are `mp_...`): the prefix finds the
row, a SHA-256 of the whole token is compared in constant time. Scopes never exceed what the
owner's roles allow (portal.roles.SCOPE_REQUIRES), and a request made with a token is limited
to both (portal.roles.user_can).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from portal.audit import Actor, audit_record
from portal.errors import ApplicationError, NotFoundError, PermissionDeniedError
from portal.models import AccessToken
from portal.roles import SCOPE_REQUIRES, SCOPES, user_can

TOKEN_PREFIX = "pt_"  # noqa: S105 - the public marker of a token
LAST_USED_EVERY = timedelta(seconds=60)  # between last_used_at writes per token
# What a prefix can be; anything else is answered without a query (a NUL byte would not
# even reach PostgreSQL).
_PREFIX = re.compile(r"[0-9a-f]{1,16}")


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def access_token_list(*, user: Any) -> QuerySet[AccessToken]:
    return AccessToken.objects.filter(user=user).order_by("-created_at", "-id")


def access_token_get(*, user: Any, prefix: str) -> AccessToken:
    token = None
    if _PREFIX.fullmatch(prefix):
        token = AccessToken.objects.filter(user=user, prefix=prefix).first()
    if token is None:
        raise NotFoundError(f"you have no token with prefix {prefix}")
    return token


def access_token_create(
    *,
    user: Any,
    actor: Actor,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
) -> tuple[AccessToken, str]:
    """Create a token for `user`; returns (row, raw token). Each scope must be one the user's
    roles allow; a request made with a token (`user_can` consults its scopes) cannot widen
    them, so a token cannot mint a broader one."""
    scopes = sorted(set(scopes))
    if not scopes:
        raise ApplicationError("a token needs at least one scope")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ApplicationError(f"unknown scopes: {', '.join(unknown)}")
    refused = [s for s in scopes if not user_can(user, SCOPE_REQUIRES[s])]
    if refused:
        raise PermissionDeniedError(
            f"your role does not allow a token with the scopes: {', '.join(refused)}"
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("the expiry must be in the future")
    prefix = secrets.token_hex(6)
    raw = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        token = AccessToken.objects.create(
            user=user,
            name=name[:100] or "token",
            prefix=prefix,
            token_hash=_hash(raw),
            scopes=scopes,
            expires_at=expires_at,
        )
        audit_record(
            actor=actor,
            action="token.created",
            target=token,
            details={
                "prefix": prefix,
                "owner": user.get_username(),
                "scopes": scopes,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return token, raw


def access_token_revoke(*, token: AccessToken, actor: Actor) -> AccessToken:
    if token.revoked_at is not None:
        return token
    with transaction.atomic():
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action="token.revoked",
            target=token,
            details={"prefix": token.prefix, "owner": token.user.get_username()},
        )
    return token


class TokenRefused(Exception):
    """The token is malformed, unknown, revoked, expired, or its owner inactive."""


def access_token_check(raw: str) -> AccessToken:
    """The live token row for a raw token (owner selected), or TokenRefused. Marks it used
    (at most once a minute per token: a write per request would make reads cost a write)."""
    if not raw.startswith(TOKEN_PREFIX):
        raise TokenRefused("not a personal access token")
    prefix, _, secret = raw[len(TOKEN_PREFIX) :].partition("_")
    if not _PREFIX.fullmatch(prefix) or not secret:
        raise TokenRefused("malformed token")
    token = AccessToken.objects.select_related("user").filter(prefix=prefix).first()
    if token is None or not hmac.compare_digest(token.token_hash, _hash(raw)):
        raise TokenRefused("invalid token")
    now = timezone.now()
    if token.revoked_at is not None:
        raise TokenRefused("this token was revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise TokenRefused("this token has expired")
    if not token.user.is_active:
        raise TokenRefused("the token's owner is inactive")
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
