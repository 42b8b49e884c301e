"""The WSGI fast lane: API-key prediction calls skip Django's middleware stack and URL resolver.

A prediction call with an API key needs none of the session, CSRF, auth, messages or
URL-resolution machinery: it is authenticated by its key. `wrap(application)` (see
portal/wsgi.py) sends such calls (POST .../predict and .../infer with an `Authorization` or
`X-API-Key` header) straight to the same view functions the URL conf uses, with the same
request object (Django's `WSGIRequest`), and applies what the skipped middleware would
have added to the answer: the request id, Host validation, the HTTPS redirect rule and the
security headers (SecurityMiddleware, X-Frame-Options). Everything else, browser calls with
a session included, goes through Django as usual, so behaviour is the same on both lanes;
the tests run every prediction case through both.

Django's request_started/request_finished signals are not sent on this lane: they close
and re-check the database connection on every request (a `SELECT 1` per call with
CONN_HEALTH_CHECKS). Here the connection is kept while it works, dropped after an error and
when CONN_MAX_AGE has passed, which is what those signals would decide.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.db import connections
from django.http import JsonResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware

from deployments_app.predict import views
from portal.middleware import _VALID as _VALID_REQUEST_ID

log = logging.getLogger(__name__)

_ROUTE = re.compile(
    r"^/(?:api/v1/deployments/(?P<predict>[A-Za-z0-9._-]+)/predict"
    r"|v2/models/(?P<infer>[A-Za-z0-9._-]+)/infer)$"
)
_ANONYMOUS = AnonymousUser()


def _passthrough(response):
    return response


_security = SecurityMiddleware(_passthrough)
_xframe = XFrameOptionsMiddleware(_passthrough)


def route(method: str, path: str, *, has_key: bool, prefixed: bool) -> tuple[Callable, str] | None:
    """(view, deployment name) when a call belongs on a fast lane (WSGI or ASGI), else None."""
    if method != "POST" or not has_key or prefixed:  # prefixed: leave URL handling to Django
        return None
    match = _ROUTE.match(path)
    if match is None:
        return None
    if match["predict"]:
        return views.predict, match["predict"]
    return views.v2_infer, match["infer"]


def _route(environ: dict[str, Any]) -> tuple[Callable, str] | None:
    return route(
        environ.get("REQUEST_METHOD", ""),
        environ.get("PATH_INFO", ""),
        has_key=bool(environ.get("HTTP_AUTHORIZATION") or environ.get("HTTP_X_API_KEY")),
        prefixed=bool(environ.get("SCRIPT_NAME")),
    )


def _tidy_connections(failed: bool) -> None:
    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        if conn.connection is None or conn.in_atomic_block:
            continue  # never end a transaction someone else holds open
        if failed or conn.errors_occurred or (conn.close_at is not None and now >= conn.close_at):
            conn.close()


def wrap(django_app: Callable) -> Callable:
    """A WSGI application: the fast lane for API-key prediction calls, Django for the rest."""

    def application(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        routed = _route(environ)
        if routed is None:
            return django_app(environ, start_response)
        request = WSGIRequest(environ)
        try:
            request.get_host()
        except DisallowedHost:
            return django_app(environ, start_response)  # Django answers 400 and logs it
        if _security.process_request(request) is not None:
            return django_app(environ, start_response)  # HTTPS redirect: Django answers
        view, name = routed
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request.request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.user = _ANONYMOUS
        failed = False
        try:
            response = view(request, name)
        except Exception:
            failed = True
            log.exception("prediction call failed (request %s)", request.request_id)
            response = JsonResponse(
                {"error": "internal error", "request_id": request.request_id}, status=500
            )
        finally:
            _tidy_connections(failed)
        response["X-Request-ID"] = request.request_id
        response = _xframe.process_response(request, _security.process_response(request, response))
        status = f"{response.status_code} {response.reason_phrase}"
        start_response(status, list(response.items()))
        return [response.content]

    application.django_app = django_app  # type: ignore[attr-defined]
    return application
