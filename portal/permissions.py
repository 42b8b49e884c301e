"""Capability checks for pages (mixin, decorator) and the API (DRF permission)."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from portal.roles import user_can


def capability_required(capability: str):
    """Page decorator: anonymous users go to the login page, others without it get 403."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not user_can(request.user, capability):
                raise PermissionDenied(f"your role does not allow '{capability}'")
            return view(request, *args, **kwargs)

        wrapper.required_capability = capability
        return wrapper

    return decorator


class CapabilityRequiredMixin:
    """Class-based page equivalent of `capability_required`."""

    capability = "view"

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not user_can(request.user, self.capability):
            raise PermissionDenied(f"your role does not allow '{self.capability}'")
        return super().dispatch(request, *args, **kwargs)


def HasCapability(read: str = "view", write: str | None = None):  # noqa: N802 - a class factory
    """DRF permission: `read` for safe methods, `write` (default: same) for the others."""

    class _Permission(BasePermission):
        message = "your role does not allow this action"

        def has_permission(self, request, view):
            capability = read if request.method in ("GET", "HEAD", "OPTIONS") else (write or read)
            return user_can(request.user, capability)

    _Permission.__name__ = f"HasCapability_{read}_{write or read}"
    return _Permission
