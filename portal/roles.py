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
    if user.is_superuser:
        return True
    return bool(user_roles(user) & CAPABILITIES[capability])
