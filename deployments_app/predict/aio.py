"""The asynchronous lane: API-key prediction calls answered on the event loop.

`portal/asgi.py` (what `runportal` serves, with uvicorn) puts `wrap(...)` in front of Django:
POSTs to the prediction routes (`routes.INFER_ROUTES`) that carry an API key are answered
here; every other request, browser calls with a session included, goes to Django (run in a
thread pool by a2wsgi). The steps, their order and their answers are the pipeline's
(`pipeline.plan`); this module is only its asynchronous driver and the I/O it needs:

* the key, the deployment's replicas and the rate-limit lease come from process memory
  (`*_local`); when only I/O can answer (cache miss, refresh, new lease, last-used write) the
  blocking function runs in a worker thread;
* the replica is called over keep-alive connections with a small HTTP/1.1 client on asyncio
  streams and httptools (uvicorn's parser): a third of aiohttp's CPU per call and a tenth of
  httpx's, measured here; refused, reset and stale connections fail over as in `forward`;
* the log row is committed before the answer leaves, grouped with the rows of concurrent
  calls into one prepared INSERT on the process's own asyncio PostgreSQL connection.

Django's security middleware is applied to every answer (Host check, HTTPS redirect,
security headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httptools
from django.conf import settings
from django.db import DatabaseError, connections
from django.http import HttpResponse, JsonResponse
from django.http.request import split_domain_port, validate_host
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware

from deployments_app.predict import keys, logwriter, pipeline, proxy, routes, shadow
from deployments_app.predict.proxy import Backend, Forwarded, Target, UpstreamError
from deployments_app.runtimes.base import socket_path
from portal.middleware import _VALID as _VALID_REQUEST_ID

log = logging.getLogger(__name__)
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


# --------------------------------------------------------------------------- helpers


def _passthrough(response):
    return response


_security = SecurityMiddleware(_passthrough)
_xframe = XFrameOptionsMiddleware(_passthrough)


def _tidy_connections(failed: bool) -> None:
    """What Django's request_finished would decide for a worker thread's connections,
    without its `SELECT 1` per call: keep them while they work, close after an error and
    once CONN_MAX_AGE has passed."""
    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        if conn.connection is None or conn.in_atomic_block:
            continue  # never end a transaction someone else holds open
        if failed or conn.errors_occurred or (conn.close_at is not None and now >= conn.close_at):
            conn.close()


async def _in_thread(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run blocking Django/Redis code in a worker thread, tidying its DB connection after."""

    def run():
        failed = False
        try:
            return fn(*args, **kwargs)
        except Exception:
            failed = True
            raise
        finally:
            _tidy_connections(failed)

    return await asyncio.to_thread(run)


class _LoopState:
    """What belongs to one event loop: idle upstream connections, the log batcher."""

    def __init__(self) -> None:
        self.idle: dict[str, list[tuple[asyncio.StreamReader, Any]]] = {}  # per replica base
        self.log = AsyncGroupCommit()
        self.shadow: asyncio.Queue[shadow.Copy] | None = None
        self.shadow_task: asyncio.Task | None = None

    def shadow_submit(self, copy: shadow.Copy | None) -> None:
        """Queue a copy for this loop's shadow worker; full: dropped and counted."""
        if copy is None:
            return
        if self.shadow is None:
            self.shadow = asyncio.Queue(maxsize=settings.PORTAL_SHADOW_QUEUE)
        try:
            self.shadow.put_nowait(copy)
        except asyncio.QueueFull:
            shadow.SHADOW_CALLS.labels(copy.target.name, "dropped").inc()
            return
        if self.shadow_task is None or self.shadow_task.done():
            self.shadow_task = asyncio.create_task(self._shadow_worker())

    async def _shadow_worker(self) -> None:
        """Replay queued copies; write their pairs once a second (or per BATCH); end when
        idle (the next copy starts a new worker)."""
        queue, loop = self.shadow, asyncio.get_running_loop()
        rows: list[dict] = []
        flushed = loop.time()
        while True:
            try:
                async with asyncio.timeout(shadow.FLUSH_SECONDS):
                    copy = await queue.get()
            except TimeoutError:
                copy = None
            if copy is not None:
                rows.append(await _replay(copy))
            due = copy is None or len(rows) >= shadow.BATCH
            if rows and (due or loop.time() - flushed >= shadow.FLUSH_SECONDS):
                try:
                    await _in_thread(shadow.write_pairs, rows)
                except Exception:  # noqa: BLE001 - a lost pair must not stop the worker
                    log.exception("could not record %d shadow pair(s)", len(rows))
                rows, flushed = [], loop.time()
            if copy is None and not rows:
                return


async def _replay(copy: shadow.Copy) -> dict:
    try:
        result = await forward(copy.target, copy.backend, copy.body)
    except Exception as exc:  # noqa: BLE001 - the shadow's failure is its record
        shadow.SHADOW_CALLS.labels(copy.target.name, "failed").inc()
        return shadow.pair(copy, None, exc)
    shadow.SHADOW_CALLS.labels(copy.target.name, "sent").inc()
    return shadow.pair(copy, result, None)


_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
    weakref.WeakKeyDictionary()
)


def _state() -> _LoopState:
    loop = asyncio.get_running_loop()
    state = _states.get(loop)
    if state is None:
        state = _states[loop] = _LoopState()
    return state


# --------------------------------------------------------------------------- upstream


class _Stale(Exception):
    """A reused keep-alive connection closed before answering: retry on a new one."""


class _Response:
    __slots__ = ("done", "keep_alive", "parser", "parts")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.done = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.done = True
        # Asked here: once the callback returns the parser has reset for the next message.
        self.keep_alive = self.parser.should_keep_alive()


async def _exchange(
    reader: asyncio.StreamReader, writer: Any, request: bytes, reused: bool
) -> tuple[int, bytes, bool]:
    writer.write(request)
    response = _Response()
    parser = response.parser
    received = False
    while not response.done:
        data = await reader.read(65536)
        if not data:
            if reused and not received:
                raise _Stale
            raise ConnectionResetError("the replica closed the connection mid-answer")
        received = True
        parser.feed_data(data)
    return parser.get_status_code(), b"".join(response.parts), response.keep_alive


async def _open(base: str) -> tuple[asyncio.StreamReader, Any]:
    sock = socket_path(base)
    if sock is not None:
        return await asyncio.open_unix_connection(sock)
    parts = urlsplit(base)
    return await asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 80)


async def post(
    base: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """POST `body` to base+path over a pooled keep-alive connection: (status, body).
    `base` is `unix:/path` or `http://host:port`; `headers` are sent with it (the token).

    Raises TimeoutError (connect or read), ConnectionError/OSError (refused, reset)."""
    extra = "".join(
        f"{k}: {v}\r\n" for k, v in (headers or {}).items() if k.lower() != "content-type"
    )
    host = "localhost" if base.startswith("unix:") else urlsplit(base).netloc
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle = _state().idle.setdefault(base, [])
    while True:
        reused = bool(idle)
        if reused:
            reader, writer = idle.pop()
        else:
            async with asyncio.timeout(settings.PORTAL_PREDICT_CONNECT_TIMEOUT):
                reader, writer = await _open(base)
        try:
            async with asyncio.timeout(settings.PORTAL_PREDICT_READ_TIMEOUT):
                status, data, keep = await _exchange(reader, writer, request, reused)
        except _Stale:
            writer.close()
            continue
        except BaseException:
            writer.close()
            raise
        if keep and len(idle) < 64:
            idle.append((reader, writer))
        else:
            writer.close()
        return status, data


async def forward(target: Target, backend: Backend, payload: bytes) -> Forwarded:
    """proxy.forward on the event loop: round robin, failover, one refresh, same errors."""
    tried: set[str] = set()
    timed_out: UpstreamError | None = None
    for attempt in range(2):
        for replica, base in backend.next_endpoints(target.name):
            if replica in tried:
                continue
            tried.add(replica)
            started = time.perf_counter()
            try:
                status, data = await post(base, "/predict", payload, target.headers)
            except TimeoutError:
                timed_out = UpstreamError(
                    504, "the model did not answer in time (timeout)", replica
                )
                continue
            except (OSError, httptools.HttpParserError):
                continue  # refused or reset: this replica is gone, try another
            outcome = proxy.interpret(status, data, replica, (time.perf_counter() - started) * 1000)
            if outcome is not None:
                return outcome
        if attempt == 0:
            fresh = await _in_thread(proxy.get_target, target.name, fresh=True)
            backend = proxy.refreshed(fresh, backend)
    if timed_out is not None:
        raise timed_out
    raise UpstreamError(503, "no healthy replica could take the request")


# --------------------------------------------------------------------------- the log


class AsyncGroupCommit:
    """logwriter's group commit on the event loop: calls queue their row and wait; one
    flush at a time writes everything queued with one prepared INSERT, on a connection of
    its own (autocommit); a failed flush fails every call in it, and the next reconnects."""

    def __init__(self) -> None:
        self._queue: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._conn: Any = None
        self.flushes = 0
        self.rows = 0

    async def write(self, row: dict[str, Any]) -> None:
        from django.db import connection

        if connection.vendor != "postgresql":
            await _in_thread(logwriter.write, row)
            return
        future = asyncio.get_running_loop().create_future()
        self._queue.append((row, future))
        if self._task is None:
            self._task = asyncio.create_task(self._flush_all())
        await future

    async def _connection(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            from django.db import connections

            db = connections["default"].settings_dict
            self._conn = await psycopg.AsyncConnection.connect(
                dbname=db["NAME"],
                user=db.get("USER") or None,
                password=db.get("PASSWORD") or None,
                host=db.get("HOST") or None,
                port=db.get("PORT") or None,
                autocommit=True,
                connect_timeout=5,
                application_name="portal-predict-log",
            )
        return self._conn

    async def _flush_all(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: logwriter.MAX_BATCH]
                del self._queue[: logwriter.MAX_BATCH]
                try:
                    conn = await self._connection()
                    await conn.execute(
                        logwriter.insert_sql(len(batch)),
                        logwriter.params([row for row, _ in batch]),
                        prepare=True,
                    )
                except Exception as exc:  # noqa: BLE001 - handed to every caller
                    await self._drop()
                    error = DatabaseError(f"prediction log write failed: {exc}")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                self.flushes += 1
                self.rows += len(batch)
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._task = None

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is broken already
                await conn.close()


# --------------------------------------------------------------------------- the lane


class _Request:
    """What the views' helpers and Django's security middleware read from a request."""

    def __init__(self, scope: Scope, request_id: str) -> None:
        self.scope = scope
        self.request_id = request_id
        client = scope.get("client")
        self.META = {"REMOTE_ADDR": client[0] if client else ""}

    def is_secure(self) -> bool:
        header = settings.SECURE_PROXY_SSL_HEADER
        if header:
            name, value = header
            wanted = name.removeprefix("HTTP_").replace("_", "-").lower()
            for key, got in self.scope.get("headers", []):
                if key.decode("latin-1") == wanted:
                    return got.decode("latin-1").split(",", 1)[0].strip() == value
        return self.scope.get("scheme") == "https"


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _allowed_host(headers: dict[str, str]) -> bool:
    host = headers.get("host", "")
    domain, _port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


async def _read_body(receive: Callable, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("the client went away")
        chunk = message.get("body", b"")
        if size <= limit:
            chunks.append(chunk)
            size += len(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _check_key(need: pipeline.CheckKey) -> keys.KeyInfo | None:
    info = keys.key_check_local(need.raw)
    return await _in_thread(keys.key_check, need.raw) if info is keys.MISS else info


async def _load_target(need: pipeline.LoadTarget) -> Target | None:
    target = proxy.get_target_local(need.name)
    return await _in_thread(proxy.get_target, need.name) if target is proxy.MISS else target


async def _lease(need: pipeline.Lease) -> int:
    wait = keys.rate_limited_local(need.key)
    return await _in_thread(keys.rate_limited, need.key) if wait is keys.MISS else wait


async def _explain_lease(need: pipeline.ExplainLease) -> int:
    return await _in_thread(keys.explain_rate_limited, need.caller)


async def _note_bad_key(need: pipeline.NoteBadKey) -> int:
    return await _in_thread(keys.bad_key_note, need.address)


async def _forward(need: pipeline.Forward) -> Forwarded:
    return await forward(need.target, need.backend, need.body)


async def _write_log(need: pipeline.WriteLog) -> None:
    await _state().log.write(need.row)


ASYNC_HANDLERS: dict[type, Callable[[Any], Awaitable[Any]]] = {
    pipeline.CheckKey: _check_key,
    pipeline.LoadTarget: _load_target,
    pipeline.Lease: _lease,
    pipeline.ExplainLease: _explain_lease,
    pipeline.NoteBadKey: _note_bad_key,
    pipeline.Forward: _forward,
    pipeline.WriteLog: _write_log,
}


async def run_async(steps: pipeline.Plan) -> pipeline.Answer:
    """Drive a plan on the event loop: pipeline.run_sync's rules, awaiting where it blocks."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            need = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = await ASYNC_HANDLERS[type(need)](need), None
        except Exception as exc:  # noqa: BLE001 - handed to the step that asked
            value, error = None, exc


def _route(scope: Scope, headers: dict[str, str]) -> pipeline.Route | None:
    """The route of a call that belongs on this lane: a POST with an API key to a
    prediction path (a prefixed mount is left to Django's URL handling)."""
    if scope.get("method") != "POST" or scope.get("root_path") or not pipeline.raw_key(headers):
        return None
    found = routes.match(scope.get("path", ""))
    return pipeline.Route(*found) if found is not None else None


def wrap(fallback: ASGIApp) -> ASGIApp:
    """An ASGI application: API-key prediction calls here, everything else to `fallback`."""

    async def application(scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await fallback(scope, receive, send)
            return
        headers = _headers(scope)
        routed = _route(scope, headers)
        if routed is None or not _allowed_host(headers):
            await fallback(scope, receive, send)  # Django answers, a bad Host with 400
            return
        incoming = headers.get("x-request-id", "")
        request = _Request(scope, incoming if _VALID_REQUEST_ID.match(incoming) else "")
        if settings.SECURE_SSL_REDIRECT and not request.is_secure():
            await fallback(scope, receive, send)  # Django redirects to HTTPS
            return
        request.request_id = request.request_id or uuid.uuid4().hex
        try:
            body = await _read_body(receive, settings.PORTAL_PREDICT_MAX_BODY_BYTES)
        except ConnectionResetError:
            return
        call = pipeline.Request(
            method="POST",
            headers=headers,
            body=body,
            client_ip=request.META["REMOTE_ADDR"],
            request_id=request.request_id,
        )
        answer = None
        try:
            answer = await run_async(pipeline.plan(routed, call))
            response = HttpResponse(answer.body, status=answer.status)
            for header, value in answer.headers.items():
                response[header] = value
        except Exception:
            log.exception("prediction call failed (request %s)", request.request_id)
            response = JsonResponse(
                {"error": "internal error", "request_id": request.request_id}, status=500
            )
        response["X-Request-ID"] = request.request_id
        response = _xframe.process_response(request, _security.process_response(request, response))
        content = response.content
        response["Content-Length"] = str(len(content))
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.items()
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})
        if answer is not None and answer.shadow is not None:  # after the answer has left
            _state().shadow_submit(answer.shadow)

    application.fallback = fallback  # type: ignore[attr-defined]
    return application


async def _lifespan(receive: Callable, send: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await close_loop_state()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def close_loop_state() -> None:
    """Close this loop's idle upstream connections and its log connection."""
    state = _states.pop(asyncio.get_running_loop(), None)
    if state is not None:
        if state.shadow_task is not None:
            state.shadow_task.cancel()
        for connections in state.idle.values():
            for _reader, writer in connections:
                writer.close()
        await state.log._drop()
