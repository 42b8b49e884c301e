"""One prediction call, step by step, for every lane and every protocol: sans-I/O.

`plan(route, request)` is a generator that holds the order of the steps and the rule that
no answer leaves without its committed log row. The steps themselves are pure; where one
needs I/O the plan yields a *need* and waits for the driver's answer:

    CheckKey(raw) -> KeyInfo | None          NoteBadKey(address) -> seconds to wait
    LoadTarget(name) -> Target | None        Lease(key) -> seconds to wait (rate limit)
    ExplainLease(caller) -> seconds to wait (the explain calls' own rate limit)
    Forward(target, backend, body) -> Forwarded (raises UpstreamError)
    WriteLog(row) -> None (raises DatabaseError)

`run_sync` answers the needs with blocking calls (the Django views: browser sessions, and
`portal.wsgi` under gunicorn); `aio.run_async` answers them on the event loop, from process
memory where it can (the ASGI lane that `runportal` serves). A failure of a need is thrown
into the plan at the step that asked, so both drivers produce the same answers.

What differs between dialects (the portal's own JSON, KServe V1, MLflow, Open Inference V2)
is only how a body is parsed and how an answer is shaped: `protocols.Protocol`.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from deployments_app.models import Deployment
from deployments_app.monitoring.capture import capture_record
from deployments_app.predict import keys, logwriter, metrics, proxy, routing, shadow
from deployments_app.predict.inputs import InputError, ParsedInput
from deployments_app.predict.protocols import Answer, Protocol
from deployments_app.predict.protocols.encoding import EncodingError, decode_content
from deployments_app.predict.proxy import Backend, Forwarded, Target, UpstreamError

RUNNING_STATES = (Deployment.State.RUNNING, Deployment.State.DEGRADED)
BAD_KEY = "invalid, expired or revoked API key"
PIN_HEADER = "x-portal-version"


# --------------------------------------------------------------------------- what goes in


@dataclass(frozen=True)
class Session:
    """A browser session's caller (the Django lane only; API keys need none of this)."""

    username: str  # "" when nobody is logged in
    may_predict: bool
    csrf_failed: bool


@dataclass
class Request:
    """A call as an adapter read it: header names lower case, the body as received (at most
    PORTAL_PREDICT_MAX_BODY_BYTES + 1 bytes)."""

    method: str
    headers: Mapping[str, str]
    body: bytes
    client_ip: str
    request_id: str
    session: Session | None = None


@dataclass(frozen=True)
class Route:
    """Which protocol answers, for which deployment, pinned to a version or not."""

    protocol: Protocol
    name: str
    version: int | None = None


def raw_key(headers: Mapping[str, str]) -> str:
    """The API key of a call: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    authorization = headers.get("authorization", "")
    raw = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    return raw or headers.get("x-api-key", "").strip()


# --------------------------------------------------------------------------- what it asks for


@dataclass(frozen=True)
class CheckKey:
    raw: str


@dataclass(frozen=True)
class NoteBadKey:
    address: str


@dataclass(frozen=True)
class LoadTarget:
    name: str


@dataclass(frozen=True)
class Lease:
    key: keys.KeyInfo


@dataclass(frozen=True)
class ExplainLease:
    caller: str


@dataclass(frozen=True)
class Forward:
    target: Target
    backend: Backend
    body: bytes


@dataclass(frozen=True)
class WriteLog:
    row: dict[str, Any]


Need = CheckKey | NoteBadKey | LoadTarget | Lease | ExplainLease | Forward | WriteLog
Plan = Generator[Need, Any, Answer]


# --------------------------------------------------------------------------- the call


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


@dataclass
class Call:
    """What one call learns on its way, and what its PredictionLog row records."""

    route: Route
    request: Request
    started: float = field(default_factory=time.perf_counter)
    caller: str = ""
    key_prefix: str = ""
    target: Target | None = None
    backend: Backend | None = None
    rows: int = 0
    upstream_ms: float | None = None
    replica: str = ""
    payload: Any = None  # the parsed rows (what a capture records of the request)
    outputs: dict[str, Any] | None = None  # the model's answer (what a capture records of it)
    explained: bool = False
    latency_s: float = 0.0

    @property
    def version(self) -> int | None:
        return self.backend.version_number if self.backend is not None else None

    def row(self, status: int, error: str = "") -> dict[str, Any]:
        """The PredictionLog row of this call, answered now with `status`."""
        latency = (time.perf_counter() - self.started) * 1000
        self.latency_s = latency / 1000
        target, body = self.target, self.request.body
        capture = (
            target is not None
            and target.capture_percent > 0
            and random.random() * 100 < target.capture_percent  # noqa: S311 - sampling
        )
        return {
            "created_at": datetime.now(UTC),
            "deployment_id": target.id if target else None,
            "deployment_name": self.route.name[:63],
            "model_name": target.model_name if target else "",
            "version_number": self.version,
            "caller": self.caller[:150],
            "api_key_prefix": self.key_prefix,
            "status_code": status,
            "latency_ms": latency,
            "upstream_ms": self.upstream_ms,
            "rows": self.rows,
            "input_bytes": len(body),
            "input_sha256": hashlib.sha256(body).hexdigest() if body else "",
            "client_ip": self.request.client_ip or None,
            "request_id": self.request.request_id,
            "replica": self.replica,
            "error": error[:2000],
            "payload": capture_record(target, self.backend, self.payload, self.outputs)
            if capture
            else None,
            "explained": self.explained,
        }

    def observed(self, status: int) -> None:
        metrics.observe(self.route.name, self.version, status, self.latency_s)

    def answer(self, answer: Answer) -> Answer:
        """`answer` with what every answer carries: the model and version that served."""
        if self.target is not None:
            answer.headers["X-Model-Name"] = self.target.model_name
        if self.version is not None:
            answer.headers["X-Model-Version"] = str(self.version)
        return answer


# --------------------------------------------------------------------------- the steps


def plan(route: Route, request: Request) -> Plan:
    """Every step of a call, in order; the answer is the generator's return value."""
    call = Call(route, request)
    protocol = route.protocol
    try:
        try:
            key = yield from _authenticate(call)
            target, backend = yield from _resolve(call, key)
            parsed = _parse(call, backend)
            if parsed.explain:
                yield from _explain_allowed(call)
            _require_running(target)
            try:
                result: Forwarded = yield Forward(target, backend, _upstream_body(parsed))
            except UpstreamError as exc:
                call.replica = exc.replica
                raise CallError(exc.status, {"error": exc.message}) from exc
            call.replica, call.upstream_ms = result.replica, result.upstream_ms
            call.outputs = result.body
        except CallError as exc:
            if exc.logged:
                yield WriteLog(call.row(exc.status, exc.body.get("error", "")))
                call.observed(exc.status)
            else:
                metrics.INVALID_KEYS.labels(str(exc.status)).inc()
            return call.answer(
                protocol.error(request.request_id, exc.status, exc.body, exc.headers)
            )
        try:
            answer = protocol.render(call, result.body, parsed)
        except InputError as exc:  # the model's answer cannot be said in this protocol
            yield WriteLog(call.row(502, exc.body["error"]))
            call.observed(502)
            return call.answer(protocol.error(request.request_id, 502, exc.body, {}))
        yield WriteLog(call.row(200))  # committed before the answer leaves
        call.observed(200)
        answer.shadow = _shadow_copy(call, target, parsed, result)
        return call.answer(answer)
    except (DatabaseError, RedisError):
        return protocol.error(
            request.request_id,
            503,
            {
                "error": "the portal cannot record calls right now (database or cache "
                "unavailable); retry shortly"
            },
            {"Retry-After": "5"},
        )


def _authenticate(call: Call) -> Generator[Need, Any, keys.KeyInfo | None]:
    """An API key, or a logged-in session whose role may predict."""
    request = call.request
    raw = raw_key(request.headers)
    session = request.session
    if not raw and session is not None and session.username:
        if session.csrf_failed:  # browser sessions are subject to CSRF like any form post
            raise CallError(403, {"error": "CSRF check failed: send the X-CSRFToken header"})
        if not session.may_predict:
            raise CallError(403, {"error": "your role may not call predictions"})
        call.caller = session.username
        return None
    wait = keys.address_blocked(request.client_ip)  # memory only: no need to ask
    if wait:
        raise _too_many_bad_keys(wait)
    info = (yield CheckKey(raw)) if raw else None
    if info is None:  # like an invalid key, a missing one is counted, not logged by name
        wait = yield NoteBadKey(request.client_ip)
        if wait:
            raise _too_many_bad_keys(wait)
        error = (
            BAD_KEY
            if raw
            else ("authentication required: send an API key as 'Authorization: Bearer <key>'")
        )
        raise CallError(401, {"error": error}, {"WWW-Authenticate": "Bearer"}, logged=False)
    call.caller, call.key_prefix = info.username, info.prefix
    return info


def _too_many_bad_keys(wait: int) -> CallError:
    return CallError(
        429,
        {"error": "too many calls with invalid API keys from this address"},
        {"Retry-After": str(wait)},
        logged=False,
    )


def _resolve(call: Call, key: keys.KeyInfo | None) -> Generator[Need, Any, tuple[Target, Backend]]:
    route = call.route
    target: Target | None = yield LoadTarget(route.name)
    # A key scoped elsewhere learns nothing: the same 404 as a missing deployment.
    if target is None or (key is not None and not key.allows(target.id, target.model_id)):
        raise CallError(404, {"error": f"no deployment named '{route.name}'"})
    call.target = target
    if key is not None:
        wait = yield Lease(key)
        if wait:
            raise CallError(
                429, {"error": "rate limit exceeded for this key"}, {"Retry-After": str(wait)}
            )
    pinned = _pinned(call)
    if pinned is None:
        backend = routing.choose(target, caller=_sticky_caller(call, target))
    else:
        backend = target.backend(pinned)
        if backend is None:
            raise CallError(
                404, {"error": f"deployment '{route.name}' does not serve version {pinned}"}
            )
    call.backend = backend
    return target, backend


def _pinned(call: Call) -> int | None:
    """The version a call asks for: its route's, else an `X-Portal-Version` header."""
    if call.route.version is not None:
        return call.route.version
    header = call.request.headers.get(PIN_HEADER, "").strip()
    if not header:
        return None
    if not header.isdigit() or len(header) > 9:
        raise CallError(400, {"error": f"{PIN_HEADER} must be a version number"})
    return int(header)


def _sticky_caller(call: Call, target: Target) -> str:
    """Who the call is, for a sticky split: the rollout's sticky header names it (the
    `Authorization` or `X-API-Key` header: the API key, or the user of a session); no
    sticky header, or a call without it: "" (a random split)."""
    header = target.sticky_header
    if not header or not target.candidates:
        return ""
    if header in ("authorization", "x-api-key"):
        return call.key_prefix or call.caller
    return call.request.headers.get(header, "")


def _parse(call: Call, backend: Backend) -> ParsedInput:
    """The body, decompressed and parsed by the route's protocol, checked against the
    version's schema: 413 over the limit, 4xx with the protocol's own message otherwise."""
    request = call.request
    limit = settings.PORTAL_PREDICT_MAX_BODY_BYTES
    if len(request.body) > limit:
        raise CallError(413, {"error": f"the body is larger than {limit} bytes"})
    headers = dict(request.headers)
    try:
        body = decode_content(request.body, headers.pop("content-encoding", ""), limit)
        parsed = call.route.protocol.parse(body, headers, backend.schema)
    except EncodingError as exc:
        raise CallError(exc.status, {"error": exc.message}) from exc
    except InputError as exc:
        raise CallError(exc.status, exc.body) from exc
    call.rows = len(parsed.rows)
    call.explained = parsed.explain
    call.payload = parsed.rows
    return parsed


def _explain_allowed(call: Call) -> Generator[Need, Any, None]:
    """Explanations cost many model evaluations: a limit of their own per key or user."""
    caller = f"key:{call.key_prefix}" if call.key_prefix else f"user:{call.caller}"
    wait = yield ExplainLease(caller)
    if wait:
        limit = settings.PORTAL_EXPLAIN_RATE_PER_MINUTE
        raise CallError(
            429,
            {
                "error": f"explain rate limit exceeded: at most {limit} calls with explain per "
                f"minute for this caller (PORTAL_EXPLAIN_RATE_PER_MINUTE); retry in {wait} s, "
                "or call without explain"
            },
            {"Retry-After": str(wait)},
        )


def _require_running(target: Target) -> None:
    if target.state not in RUNNING_STATES:
        raise CallError(
            503,
            {"error": f"deployment '{target.name}' is {target.state}", "state": target.state},
            {"Retry-After": "5"},
        )


def _upstream_body(parsed: ParsedInput, *, proba: bool | None = None) -> bytes:
    """The replica's request; explanations only for the call itself (`proba` given: a
    shadow copy, which never explains)."""
    wanted = parsed.proba if proba is None else proba
    params = {"proba": wanted}
    if parsed.explain and proba is None:
        params["explain"] = True
    return json.dumps({"instances": parsed.rows, "params": params}).encode()


def _shadow_copy(
    call: Call, target: Target, parsed: ParsedInput, result: Forwarded
) -> shadow.Copy | None:
    """A sampled call's copy for the shadow version (asking for probabilities whenever the
    shadow has them, so the report can compare them), or None."""
    backend = target.shadow
    if backend is None or random.random() * 100 >= target.shadow_percent:  # noqa: S311
        return None
    return shadow.Copy(
        target=target,
        backend=backend,
        body=_upstream_body(parsed, proba=bool(backend.schema.get("has_predict_proba"))),
        request_id=call.request.request_id,
        primary_version=call.version or 0,
        primary=result.body,
        primary_ms=result.upstream_ms,
        created_at=shadow.now(),
    )


# --------------------------------------------------------------------------- the blocking driver


SYNC_HANDLERS: dict[type, Callable[[Any], Any]] = {
    CheckKey: lambda need: keys.key_check(need.raw),
    NoteBadKey: lambda need: keys.bad_key_note(need.address),
    LoadTarget: lambda need: proxy.get_target(need.name),
    Lease: lambda need: keys.rate_limited(need.key),
    ExplainLease: lambda need: keys.explain_rate_limited(need.caller),
    Forward: lambda need: proxy.forward(need.target, need.backend, need.body),
    WriteLog: lambda need: logwriter.write(need.row),
}


def run_sync(steps: Plan) -> Answer:
    """Drive a plan with blocking calls: each need answered in turn, failures thrown back."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            need = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = SYNC_HANDLERS[type(need)](need), None
        except Exception as exc:  # noqa: BLE001 - handed to the step that asked
            value, error = None, exc
