"""The prediction API's Django views: the blocking lane of the one pipeline, and the reads.

POST routes (`routes.INFER_ROUTES`) adapt a Django request to `pipeline.Request` and run the
plan with `pipeline.run_sync`. Django serves them for browser sessions (CSRF-checked), for
`portal.wsgi` under gunicorn, and for whatever the ASGI lane hands on; API-key calls under
`runportal` are answered by the same plan on the event loop (`aio.py`).

The GET routes answer metadata and readiness (V2, KServe V1): reads, so no log row.
Plain Django views rather than DRF: DRF's `request.data` answers 415 without a Content-Type
(tritonclient sends none), and `request.body` is capped by DATA_UPLOAD_MAX_MEMORY_SIZE; the
body is read raw here, with the portal's own limit.
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from deployments_app.predict import keys, metrics, pipeline, shadow
from deployments_app.predict.pipeline import RUNNING_STATES, Route, Session
from deployments_app.predict.protocols import Answer, Protocol, v2
from deployments_app.predict.proxy import Target, get_target
from portal.audit import client_ip
from portal.roles import user_can

PORTAL_VERSION = "0.1.0"


def to_response(answer: Answer) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status)
    for header, value in answer.headers.items():
        response[header] = value
    return response


def _session(request: HttpRequest, headers: dict[str, str]) -> Session | None:
    """The browser session's caller, when the call carries no API key."""
    if pipeline.raw_key(headers):
        return None
    user = request.user
    if not user.is_authenticated:
        return Session("", may_predict=False, csrf_failed=False)
    reason = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
    return Session(user.get_username(), user_can(user, "predict"), csrf_failed=reason is not None)


def infer_view(protocol: Protocol):
    """The Django view of one protocol's POST routes."""

    @csrf_exempt  # API keys are not cookies; session callers are CSRF-checked in _session
    def view(request: HttpRequest, name: str, version: str | None = None) -> HttpResponse:
        if request.method != "POST":
            answer = protocol.error(request.request_id, 405, {"error": "use POST"}, {})
            answer.headers["Allow"] = "POST"
            return to_response(answer)
        headers = {k.lower(): v for k, v in request.headers.items()}
        call = pipeline.Request(
            method="POST",
            headers=headers,
            body=request.read(settings.PORTAL_PREDICT_MAX_BODY_BYTES + 1),
            client_ip=client_ip(request) or "",
            request_id=request.request_id,
            session=_session(request, headers),
        )
        route = Route(protocol, name, int(version) if version is not None else None)
        answer = pipeline.run_sync(pipeline.plan(route, call))
        shadow.submit(answer.shadow)  # queued, never waited for
        return to_response(answer)

    view.protocol = protocol  # type: ignore[attr-defined]
    return view


# --------------------------------------------------------------------------- reads


def _read(view):
    """GET only; a session that may view or an API key for the deployment; never a 500."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, name: str, version: str | None = None) -> HttpResponse:
        if request.method != "GET":
            response = JsonResponse({"error": "use GET"}, status=405)
            response["Allow"] = "GET"
            return response
        try:
            target, error = _lookup(request, name, int(version) if version else None)
            return error or view(request, target, int(version) if version else None)
        except (DatabaseError, RedisError):
            response = JsonResponse(
                {"error": "the portal cannot answer right now; retry shortly"}, status=503
            )
            response["Retry-After"] = "5"
            return response

    return wrapper


def _lookup(
    request: HttpRequest, name: str, version: int | None
) -> tuple[Target | None, HttpResponse | None]:
    """The deployment a read is about, or the answer refusing it (401/429/404)."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    raw = pipeline.raw_key(headers)
    key = None
    if raw or not user_can(request.user, "view"):
        address = client_ip(request) or ""
        wait = keys.address_blocked(address)
        key = keys.key_check(raw) if raw and not wait else None
        if key is None:
            wait = wait or keys.bad_key_note(address)
            if wait:
                response = JsonResponse(
                    {"error": "too many calls with invalid API keys from this address"},
                    status=429,
                )
                response["Retry-After"] = str(wait)
                return None, response
            metrics.INVALID_KEYS.labels("401").inc()
            response = JsonResponse(
                {"error": pipeline.BAD_KEY if raw else "authentication required"}, status=401
            )
            response["WWW-Authenticate"] = "Bearer"
            return None, response
    target = get_target(name)
    if target is None or (key is not None and not key.allows(target.id, target.model_id)):
        return None, JsonResponse({"error": f"no deployment named '{name}'"}, status=404)
    if target.backend(version) is None:
        return None, JsonResponse(
            {"error": f"deployment '{name}' does not serve version {version}"}, status=404
        )
    return target, None


def _ready(target: Target, version: int | None) -> bool:
    backend = target.backend(version)
    return target.state in RUNNING_STATES and backend is not None and bool(backend.endpoints)


@_read
def v2_model(request: HttpRequest, target: Target, version: int | None) -> HttpResponse:
    backend = target.backend(version)
    versions = [str(version)] if version is not None else [str(v) for v in target.versions]
    return JsonResponse(v2.model_metadata(target.name, versions, backend.schema))


@_read
def v2_model_ready(request: HttpRequest, target: Target, version: int | None) -> HttpResponse:
    ready = _ready(target, version)
    return JsonResponse({"name": target.name, "ready": ready}, status=200 if ready else 503)


@_read
def v1_model(request: HttpRequest, target: Target, version: int | None) -> HttpResponse:
    """KServe V1 readiness: GET /v1/models/<name>."""
    ready = _ready(target, version)
    return JsonResponse({"name": target.name, "ready": ready}, status=200 if ready else 503)


def v2_server_metadata(request: HttpRequest) -> HttpResponse:
    return JsonResponse(v2.server_metadata(PORTAL_VERSION))


def v2_server_ready(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ready": True})


def v2_server_live(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"live": True})


@_read
def mlflow_ping(request: HttpRequest, target: Target, version: int | None) -> HttpResponse:
    """MLflow's /ping beside /invocations: 200 with a newline (as its scoring server answers
    once the model is loaded) when the deployment takes calls, else 503."""
    status = 200 if _ready(target, version) else 503
    return HttpResponse("\n", status=status, content_type="application/json")


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics: from allowed addresses (PORTAL_METRICS_ALLOW) or for admins."""
    allowed = client_ip(request) in settings.PORTAL_METRICS_ALLOW or user_can(request.user, "admin")
    if not allowed:
        return JsonResponse({"error": "metrics are not public"}, status=403)
    data, content_type = metrics.render()
    return HttpResponse(data, content_type=content_type)
