"""Roles are Django groups; capabilities say which roles may do what.

Every page and endpoint asks for a capability, never for a group name, so the mapping lives
here only. Superusers hold every capability.
"""

from __future__ import annotations

from typing import Any

VIEWER = "viewer"
DEPLOYER = "deployer"
APPROVER = "approver"
ADMIN = "admin"
ROLES = (VIEWER, DEPLOYER, APPROVER, ADMIN)

CAPABILITIES: dict[str, frozenset[str]] = {
    # read models, versions, deployments, dashboard
    "view": frozenset({VIEWER, DEPLOYER, APPROVER, ADMIN}),
    # upload versions, launch and operate deployments, call predictions
    "upload": frozenset({DEPLOYER, ADMIN}),
    "deploy": frozenset({DEPLOYER, ADMIN}),
    "predict": frozenset({DEPLOYER, ADMIN}),
    # approve or reject versions (never one's own upload: enforced by the service)
    "approve": frozenset({APPROVER, ADMIN}),
    # archive (hide, never deploy) models and versions; deleting them is for admins only
    "archive": frozenset({DEPLOYER, ADMIN}),
    "delete": frozenset({ADMIN}),
    # see where replicas listen (socket paths): those who operate them, never viewers
    "replica_endpoints": frozenset({DEPLOYER, ADMIN}),
    # review the audit log, manage users and API keys of others
    "audit": frozenset({ADMIN}),
    "admin": frozenset({ADMIN}),
}


# Personal access tokens (portal.tokens): each scope opens these capabilities, and a request
# made with a token may use a capability only when its scopes open it AND the owner's roles
# hold it. Every scope opens "view": a token that may upload may also read back what it made.
SCOPES = ("read", "upload", "deploy", "approve", "admin")
SCOPE_CAPABILITIES: dict[str, frozenset[str]] = {
    "read": frozenset({"view"}),
    "upload": frozenset({"view", "upload", "archive"}),
    "deploy": frozenset({"view", "deploy", "predict", "replica_endpoints"}),
    "approve": frozenset({"view", "approve"}),
    "admin": frozenset(CAPABILITIES),
}
# The capability a user's roles must hold to put a scope on a token.
SCOPE_REQUIRES = {
    "read": "view",
    "upload": "upload",
    "deploy": "deploy",
    "approve": "approve",
    "admin": "admin",
}


def scope_capabilities(scopes: list[str] | tuple[str, ...]) -> frozenset[str]:
    return frozenset().union(*(SCOPE_CAPABILITIES.get(s, frozenset()) for s in scopes))


def user_roles(user: Any) -> frozenset[str]:
    """The role names of an authenticated user (cached on the user object per request)."""
    if not getattr(user, "is_authenticated", False):
        return frozenset()
    cached = getattr(user, "_portal_roles", None)
    if cached is None:
        cached = frozenset(user.groups.values_list("name", flat=True))
        user._portal_roles = cached
    return cached


def user_can(user: Any, capability: str) -> bool:
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return False
    # Set by portal.authentication.AccessTokenAuthentication on the request's user object.
    token_capabilities = getattr(user, "_portal_token_capabilities", None)
    if token_capabilities is not None and capability not in token_capabilities:
        return False
    if user.is_superuser:
        return True
    return bool(user_roles(user) & CAPABILITIES[capability])
