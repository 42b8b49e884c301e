"""Domain errors raised by services and mapped to HTTP answers in one place."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A request the service refuses: bad input or a broken rule (HTTP 400)."""

    status_code = 400

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class ConflictError(ApplicationError):
    """The target is in a state that does not allow the action (HTTP 409)."""

    status_code = 409


class NotFoundError(ApplicationError):
    """The target does not exist or the caller may not know it does (HTTP 404)."""

    status_code = 404


class PermissionDeniedError(ApplicationError):
    """The caller is known but may not do this (HTTP 403)."""

    status_code = 403
