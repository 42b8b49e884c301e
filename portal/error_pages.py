"""The portal's own 400/403/404/500 answers (with debug off Django would show bare ones):
HTML pages for people, JSON like every other API answer for the API and prediction paths."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.views import defaults

# Answered to programs, never to a browser: the REST API, the V2 inference protocol, metrics.
JSON_PREFIXES = ("/api/", "/v2/", "/metrics")


def _json(request: HttpRequest, status: int, message: str) -> JsonResponse | None:
    if not request.path.startswith(JSON_PREFIXES):
        return None
    body = {"error": message}
    if getattr(request, "request_id", None):
        body["request_id"] = request.request_id
    return JsonResponse(body, status=status)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _json(request, 400, "bad request") or defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _json(request, 403, "not allowed") or defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _json(request, 404, "not found") or defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    answer = _json(request, 500, "internal error: the portal logged it")
    if answer:
        return answer
    # No request context: whatever broke (the database, a context processor) may break it too.
    html = loader.get_template("500.html").render(
        {"request_id": getattr(request, "request_id", "")}
    )
    return HttpResponse(html, status=500)
