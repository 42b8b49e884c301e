"""The prediction API: one authenticated, validating, logged proxy in front of replicas.

Plain Django views rather than DRF on purpose: this is the hot path, and each call does
exactly: authenticate, find the deployment, check the input, forward, log, answer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any, NoReturn

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from deployments_app.models import Deployment
from deployments_app.predict import keys, logwriter, metrics
from deployments_app.predict.inputs import InputError, ParsedInput, check_rows, parse_body
from deployments_app.predict.proxy import Target, UpstreamError, forward, get_target
from portal import jsonlimits
from portal.audit import client_ip
from portal.roles import user_can

log = logging.getLogger(__name__)
RUNNING_STATES = (Deployment.State.RUNNING, Deployment.State.DEGRADED)


class CallError(Exception):
    """A refused call. `logged=False`: counted in a metric instead of a log row (invalid keys:
    one row per guess, named by the guesser, would let anyone fill the log)."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        *,
        logged: bool = True,
    ):
        super().__init__(body.get("error", ""))
        self.status, self.body, self.headers = status, body, headers or {}
        self.logged = logged


class Call:
    """Everything one call records in its PredictionLog row."""

    def __init__(self, request: HttpRequest, name: str) -> None:
        self.request = request
        self.name = name
        self.started = time.perf_counter()
        self.caller = ""
        self.key_prefix = ""
        self.target: Target | None = None
        self.rows = 0
        self.body_bytes = b""
        self.upstream_ms: float | None = None
        self.replica = ""
        self.payload: Any = None

    def row(self, status: int, error: str = "") -> dict[str, Any]:
        """The PredictionLog row of this call, answered now with `status`."""
        latency = (time.perf_counter() - self.started) * 1000
        self.latency_s = latency / 1000
        target = self.target
        capture = (
            target is not None
            and target.capture_percent > 0
            and random.random() * 100 < target.capture_percent  # noqa: S311 - sampling
        )
        return {
            "created_at": datetime.now(UTC),
            "deployment_id": target.id if target else None,
            "deployment_name": self.name[:63],
            "model_name": target.model_name if target else "",
            "version_number": target.version_number if target else None,
            "caller": self.caller[:150],
            "api_key_prefix": self.key_prefix,
            "status_code": status,
            "latency_ms": latency,
            "upstream_ms": self.upstream_ms,
            "rows": self.rows,
            "input_bytes": len(self.body_bytes),
            "input_sha256": hashlib.sha256(self.body_bytes).hexdigest() if self.body_bytes else "",
            "client_ip": client_ip(self.request),
            "request_id": self.request.request_id,
            "replica": self.replica,
            "error": error[:2000],
            "payload": self.payload if capture else None,
        }

    def observed(self, status: int) -> None:
        target = self.target
        metrics.observe(
            self.name, target.version_number if target else None, status, self.latency_s
        )

    def log(self, status: int, error: str = "") -> None:
        logwriter.write(self.row(status, error))
        self.observed(status)

    def refused(self, exc: CallError) -> None:
        """Record a refusal: its log row, or for an unlogged one only the count."""
        if exc.logged:
            self.log(exc.status, exc.body.get("error", ""))
        else:
            metrics.INVALID_KEYS.labels(str(exc.status)).inc()


def raw_key(authorization: str, x_api_key: str) -> str:
    """The API key of a call: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    raw = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    return raw or x_api_key.strip()


def key_verdict(info: keys.KeyInfo | None, call: Call) -> keys.KeyInfo:
    if info is None:
        raise CallError(
            401, {"error": "invalid, expired or revoked API key"}, {"WWW-Authenticate": "Bearer"}
        )
    call.caller, call.key_prefix = info.username, info.prefix
    return info


def address_verdict(call: Call) -> None:
    """429 at once, unchecked, for an address over its invalid-key limit this minute."""
    wait = keys.address_blocked(client_ip(call.request))
    if wait:
        raise _too_many_bad_keys(wait)


def bad_key(call: Call, error: str = "invalid, expired or revoked API key") -> NoReturn:
    """Refuse an invalid (or missing) key, unlogged: 401, or 429 once its address is over
    the limit."""
    wait = keys.bad_key_note(client_ip(call.request))
    if wait:
        raise _too_many_bad_keys(wait)
    raise CallError(401, {"error": error}, {"WWW-Authenticate": "Bearer"}, logged=False)


def _too_many_bad_keys(wait: int) -> CallError:
    return CallError(
        429,
        {"error": "too many calls with invalid API keys from this address"},
        {"Retry-After": str(wait)},
        logged=False,
    )


def _authenticate(request: HttpRequest, call: Call) -> keys.KeyInfo | None:
    """An API key (Authorization: Bearer / X-API-Key) or a logged-in user who may predict."""
    raw = raw_key(request.headers.get("Authorization", ""), request.headers.get("X-API-Key", ""))
    if raw:
        address_verdict(call)
        info = keys.key_check(raw)
        if info is None:
            bad_key(call)
        return key_verdict(info, call)
    user = request.user
    if not user.is_authenticated:  # like an invalid key: counted, not logged under its name
        address_verdict(call)
        bad_key(call, "authentication required: send an API key as 'Authorization: Bearer <key>'")
    # Browser sessions are subject to CSRF like any form post.
    reason = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
    if reason is not None:
        raise CallError(403, {"error": "CSRF check failed: send the X-CSRFToken header"})
    if not user_can(user, "predict"):
        raise CallError(403, {"error": "your role may not call predictions"})
    call.caller = user.get_username()
    return None


def _resolve(call: Call, key: keys.KeyInfo | None) -> Target:
    target = target_verdict(get_target(call.name), call, key)
    if key is not None:
        rate_verdict(keys.rate_limited(key))
    return target


def target_verdict(target: Target | None, call: Call, key: keys.KeyInfo | None) -> Target:
    # A key scoped elsewhere learns nothing: the same 404 as a missing deployment.
    if target is None or (key is not None and not key.allows(target.id, target.model_id)):
        raise CallError(404, {"error": f"no deployment named '{call.name}'"})
    call.target = target
    return target


def rate_verdict(wait: int) -> None:
    if wait:
        raise CallError(
            429, {"error": "rate limit exceeded for this key"}, {"Retry-After": str(wait)}
        )


def _read_json(request: HttpRequest, call: Call) -> Any:
    check_declared(request.content_type or "", request.META.get("CONTENT_LENGTH"))
    return decode_body(request.read(settings.PORTAL_PREDICT_MAX_BODY_BYTES + 1), call)


def check_declared(content_type: str, content_length: str | None) -> None:
    """415 for anything but JSON; 413 when the declared length is over the limit."""
    if content_type != "application/json":
        raise CallError(
            415,
            {
                "error": f"send JSON (Content-Type: application/json), "
                f"not '{content_type or 'nothing'}'"
            },
        )
    limit = settings.PORTAL_PREDICT_MAX_BODY_BYTES
    try:
        length = int(content_length or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise CallError(413, {"error": f"the body is larger than {limit} bytes"})


def decode_body(body: bytes, call: Call) -> Any:
    """The JSON of a body read up to limit + 1 bytes; 413 over the limit, 400 malformed or
    nested too deeply (PORTAL_JSON_MAX_DEPTH)."""
    limit = settings.PORTAL_PREDICT_MAX_BODY_BYTES
    if len(body) > limit:
        raise CallError(413, {"error": f"the body is larger than {limit} bytes"})
    call.body_bytes = body
    try:
        return jsonlimits.loads(body, max_bytes=limit)
    except jsonlimits.JSONLimitError as exc:
        raise CallError(400, {"error": str(exc)}) from exc


def _require_running(target: Target) -> None:
    if target.state not in RUNNING_STATES:
        raise CallError(
            503,
            {"error": f"deployment '{target.name}' is {target.state}", "state": target.state},
            {"Retry-After": "5"},
        )


def _answer(
    call: Call, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JsonResponse:
    body.setdefault("request_id", call.request.request_id)
    response = JsonResponse(body, status=status)
    if call.target is not None:
        response["X-Model-Name"] = call.target.model_name
        response["X-Model-Version"] = str(call.target.version_number)
    for header, value in (headers or {}).items():
        response[header] = value
    return response


def _run(call: Call, parse) -> tuple[Target, dict[str, Any], ParsedInput]:
    key = _authenticate(call.request, call)
    target = _resolve(call, key)
    body = _read_json(call.request, call)
    parsed, upstream_body = prepare(call, target, body, parse)
    try:
        result = forward(target, upstream_body)
    except UpstreamError as exc:
        call.replica = exc.replica
        raise CallError(exc.status, {"error": exc.message}) from exc
    call.replica, call.upstream_ms = result.replica, result.upstream_ms
    return target, result.body, parsed


def prepare(call: Call, target: Target, body: Any, parse) -> tuple[ParsedInput, bytes]:
    """Check the input against the schema and the deployment's state: (rows, upstream body)."""
    try:
        parsed = parse(body, target.schema)
    except InputError as exc:
        raise CallError(exc.status, exc.body) from exc
    call.rows = len(parsed.rows)
    call.payload = body
    _require_running(target)
    upstream_body = json.dumps(
        {"instances": parsed.rows, "params": {"proba": parsed.proba}}
    ).encode()
    return parsed, upstream_body


def _unavailable_guard(view):
    """Database or cache down: a clear 503, never a 500, and never an unlogged answer."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, name: str) -> HttpResponse:
        try:
            return view(request, name)
        except (DatabaseError, RedisError) as exc:
            return unavailable_response(exc, getattr(request, "request_id", ""))

    return wrapper


def unavailable_response(exc: Exception, request_id: str) -> JsonResponse:
    log.warning("prediction refused, backing store unavailable: %s", exc)
    response = JsonResponse(
        {
            "error": "the portal cannot record calls right now (database or cache "
            "unavailable); retry shortly",
            "request_id": request_id,
        },
        status=503,
    )
    response["Retry-After"] = "5"
    return response


def _prediction_endpoint(parse):
    """The shared frame of the POST endpoints: method check, the call, its log on refusal.

    The decorated function only shapes the answer from (call, target, upstream, parsed).
    """

    def decorator(render):
        @csrf_exempt  # API keys are not cookies; session callers are CSRF-checked in _authenticate
        @_unavailable_guard
        @functools.wraps(render)
        def view(request: HttpRequest, name: str) -> HttpResponse:
            call = Call(request, name)
            if request.method != "POST":
                response = _answer(call, 405, {"error": "use POST"})
                response["Allow"] = "POST"
                return response
            try:
                target, upstream, parsed = _run(call, parse)
            except CallError as exc:
                call.refused(exc)
                return _answer(call, exc.status, exc.body, exc.headers)
            response = render(call, target, upstream, parsed)
            call.log(200)  # committed before the answer leaves
            return response

        view.render, view.parse = render, parse  # for the asynchronous lane
        return view

    return decorator


@_prediction_endpoint(parse_body)
def predict(call: Call, target: Target, upstream: dict[str, Any], parsed: ParsedInput):
    body: dict[str, Any] = {
        "deployment": target.name,
        "model": target.model_name,
        "version": target.version_number,
    }
    predictions = upstream.get("predictions", [])
    if parsed.single:
        body["prediction"] = predictions[0] if predictions else None
    body["predictions"] = predictions
    if "probabilities" in upstream:
        body["probabilities"] = upstream["probabilities"]
        if upstream.get("classes") is not None:
            body["classes"] = upstream["classes"]
    return _answer(call, 200, body)


# --------------------------------------------------------------------------- Open Inference


def _v2_rows(body: Any, schema: dict[str, Any]) -> ParsedInput:
    """V2 `inputs` tensors -> rows: one [N, F] tensor, or one tensor per named column."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise InputError("a V2 request needs a non-empty 'inputs' list of tensors", status=400)
    tensors = body["inputs"]
    for t in tensors:
        if not isinstance(t, dict) or "data" not in t or "shape" not in t:
            raise InputError(
                "every tensor needs 'name', 'shape', 'datatype' and 'data'", status=400
            )
    columns = schema.get("columns")
    params = body.get("parameters") or {}
    requested = {o.get("name") for o in body.get("outputs") or [] if isinstance(o, dict)}
    proba = bool(params.get("proba")) or "predict_proba" in requested
    if len(tensors) == 1 and not (columns and tensors[0].get("name") in columns):
        t = tensors[0]
        data, shape = t["data"], t["shape"]
        if data and all(isinstance(r, list) for r in data):
            rows = data
        elif isinstance(shape, list) and len(shape) == 2 and isinstance(data, list):
            n, f = shape
            if not isinstance(n, int) or not isinstance(f, int) or n * f != len(data):
                raise InputError(f"shape {shape} does not match {len(data)} values")
            rows = [data[i * f : (i + 1) * f] for i in range(n)]
        elif isinstance(shape, list) and len(shape) == 1 and isinstance(data, list):
            rows = [[v] for v in data] if not schema.get("text_input") else [[v] for v in data]
        else:
            raise InputError("the tensor must have shape [N, F]")
    else:
        if not columns:
            raise InputError("this model takes one [N, F] tensor, not named columns")
        by_name = {t.get("name"): t for t in tensors}
        missing = [c for c in columns if c not in by_name]
        if missing:
            raise InputError(f"missing input tensor(s): {', '.join(missing)}", field=missing[0])
        series = []
        for c in columns:
            values = by_name[c]["data"]
            flat = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]
            series.append(flat)
        if len({len(s) for s in series}) != 1:
            raise InputError("all column tensors must have the same length")
        rows = [list(r) for r in zip(*series, strict=True)]
    check_rows(rows, schema)
    return ParsedInput(rows=rows, single=False, proba=proba)


def _datatype(values: list[Any]) -> str:
    if values and all(isinstance(v, bool) for v in values):
        return "BOOL"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if values and all(isinstance(v, int | float) for v in values):
        return "FP64"
    return "BYTES"


@_prediction_endpoint(_v2_rows)
def v2_infer(call: Call, target: Target, upstream: dict[str, Any], parsed: ParsedInput):
    request = call.request
    predictions = upstream.get("predictions", [])
    outputs = [
        {
            "name": "predict",
            "shape": [len(predictions)],
            "datatype": _datatype(predictions),
            "data": predictions,
        }
    ]
    probabilities = upstream.get("probabilities")
    if probabilities is not None:
        width = len(probabilities[0]) if probabilities else 0
        outputs.append(
            {
                "name": "predict_proba",
                "shape": [len(probabilities), width],
                "datatype": "FP64",
                "data": [v for row in probabilities for v in row],
            }
        )
    try:
        request_id = json.loads(call.body_bytes).get("id") or request.request_id
    except (ValueError, AttributeError):
        request_id = request.request_id
    return _answer(
        call,
        200,
        {
            "model_name": target.name,
            "model_version": str(target.version_number),
            "id": request_id,
            "outputs": outputs,
        },
    )


def _v2_lookup(request: HttpRequest, name: str) -> tuple[Target | None, HttpResponse | None]:
    call = Call(request, name)
    try:
        key = _authenticate_read(request, call)
        target = get_target(name)
        if target is None or (key is not None and not key.allows(target.id, target.model_id)):
            raise CallError(404, {"error": f"no deployment named '{name}'"})
    except CallError as exc:
        return None, _answer(call, exc.status, exc.body, exc.headers)
    return target, None


def _authenticate_read(request: HttpRequest, call: Call) -> keys.KeyInfo | None:
    if request.method != "GET":
        raise CallError(405, {"error": "use GET"}, {"Allow": "GET"})
    has_key = request.headers.get("Authorization") or request.headers.get("X-API-Key")
    if not has_key and user_can(request.user, "view"):
        return None
    return _authenticate(request, call)


def v2_model(request: HttpRequest, name: str) -> HttpResponse:
    target, error = _v2_lookup(request, name)
    if error is not None:
        return error
    schema = target.schema
    columns = schema.get("columns")
    n = schema.get("n_features") or -1
    types = schema.get("column_types") or {}
    inputs = (
        [
            {
                "name": c,
                "datatype": "BYTES" if types.get(c) == "string" else "FP64",
                "shape": [-1, 1],
            }
            for c in columns
        ]
        if columns
        else [{"name": "input-0", "datatype": "FP64", "shape": [-1, n]}]
    )
    outputs = [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    if schema.get("has_predict_proba"):
        outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, -1]})
    return JsonResponse(
        {
            "name": target.name,
            "versions": [str(target.version_number)],
            "platform": "sklearn",
            "inputs": inputs,
            "outputs": outputs,
        }
    )


def v2_model_ready(request: HttpRequest, name: str) -> HttpResponse:
    target, error = _v2_lookup(request, name)
    if error is not None:
        return error
    ready = target.state in RUNNING_STATES and bool(target.endpoints)
    return JsonResponse({"name": target.name, "ready": ready}, status=200 if ready else 503)


def v2_server_ready(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ready": True})


def v2_server_live(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"live": True})


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics: from allowed addresses (PORTAL_METRICS_ALLOW) or for admins."""
    allowed = client_ip(request) in settings.PORTAL_METRICS_ALLOW or user_can(request.user, "admin")
    if not allowed:
        return JsonResponse({"error": "metrics are not public"}, status=403)
    data, content_type = metrics.render()
    return HttpResponse(data, content_type=content_type)
