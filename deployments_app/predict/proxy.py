"""Forwarding to replicas: keep-alive pools, round robin, failover, bounded timeouts.

Replicas listen on unix sockets (`unix:/path` endpoints) that only the portal can reach, and
every call carries the deployment's replica token (runtimes.replica_token)."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import urllib3
from django.conf import settings

from deployments_app.models import Deployment, Replica, Rollout
from deployments_app.runtimes import replica_token
from deployments_app.runtimes.base import TOKEN_HEADER, socket_path

TARGET_TTL = 1.0  # seconds a process trusts its view of a deployment's replicas


@dataclass
class Backend:
    """One version of a deployment that can take calls: its input schema and its healthy
    replicas. A deployment serves its stable version; routing to others is the rollout's."""

    version_number: int
    schema: dict[str, Any]
    endpoints: list[tuple[str, str]]  # (replica name, base URL)

    def next_endpoints(self, deployment: str) -> list[tuple[str, str]]:
        """All healthy endpoints, starting at the next one in round-robin order.

        The counter lives per deployment and version, not per cached Target, so refreshing
        the replica list does not send the next call to the first replica again.
        """
        if not self.endpoints:
            return []
        counter = _counters.setdefault((deployment, self.version_number), itertools.count())
        start = next(counter) % len(self.endpoints)
        return self.endpoints[start:] + self.endpoints[:start]


@dataclass
class Target:
    """What the proxy needs about a deployment, cached briefly per process."""

    id: int
    name: str
    state: str
    model_id: int
    model_name: str
    capture_percent: int
    stable: Backend
    # The capture policy (deployments_app.monitoring.capture) when calls are sampled.
    capture: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # what every call sends upstream
    loaded_at: float = field(default_factory=time.monotonic)
    # The active rollout: its id (it seeds the sticky hash), its candidates with their
    # weights in percent, and the header that names a caller ("" = a random split).
    rollout_id: int | None = None
    candidates: list[tuple[Backend, int]] = field(default_factory=list)
    sticky_header: str = ""
    shadow: Backend | None = None
    shadow_percent: int = 0

    def backend(self, version: int | None = None) -> Backend | None:
        """The backend of `version` among those serving calls (None: the stable one)."""
        if version is None or version == self.stable.version_number:
            return self.stable
        return next((b for b, _ in self.candidates if b.version_number == version), None)

    @property
    def versions(self) -> list[int]:
        return [self.stable.version_number, *(b.version_number for b, _ in self.candidates)]


_counters: dict[tuple[str, int], itertools.count] = {}
_targets: dict[str, Target] = {}
_lock = threading.Lock()
_client: urllib3.PoolManager | None = None
_unix_pools: dict[str, urllib3.HTTPConnectionPool] = {}


class _UnixConnection(urllib3.connection.HTTPConnection):
    """urllib3's connection over a unix socket (`socket_file`), with its error types."""

    socket_file = ""

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if isinstance(self.timeout, int | float):
                sock.settimeout(self.timeout)
            sock.connect(self.socket_file)
        except TimeoutError as exc:
            sock.close()
            raise urllib3.exceptions.ConnectTimeoutError(self, f"connect timed out: {exc}") from exc
        except OSError as exc:
            sock.close()
            raise urllib3.exceptions.NewConnectionError(self, f"cannot connect: {exc}") from exc
        return sock


class _UnixPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _UnixConnection

    def __init__(self, socket_file: str, **kwargs) -> None:
        super().__init__("localhost", **kwargs)
        self.socket_file = socket_file

    def _new_conn(self):
        conn = super()._new_conn()
        conn.socket_file = self.socket_file
        return conn


def _timeout() -> urllib3.Timeout:
    return urllib3.Timeout(
        connect=settings.PORTAL_PREDICT_CONNECT_TIMEOUT,
        read=settings.PORTAL_PREDICT_READ_TIMEOUT,
    )


def pool(base: str) -> urllib3.HTTPConnectionPool:
    """The keep-alive pool of one replica (a unix socket, or http://host:port)."""
    found = _unix_pools.get(base)
    if found is not None:
        return found
    path = socket_path(base)
    if path is None:
        return client().connection_from_url(base)
    with _lock:
        found = _unix_pools.get(base)
        if found is None:
            found = _unix_pools[base] = _UnixPool(
                path, maxsize=32, block=False, retries=False, timeout=_timeout()
            )
    return found


def reset_pools() -> None:
    """Forget every pool (tests that change the timeouts; they are built with them)."""
    global _client
    with _lock:
        _client = None
        for p in _unix_pools.values():
            p.close()
        _unix_pools.clear()


def upstream_headers(deployment: str) -> dict[str, str]:
    return {"Content-Type": "application/json", TOKEN_HEADER: replica_token(deployment)}


def client() -> urllib3.PoolManager:
    """Keep-alive pools to the replicas, shared by the threads of this process.

    urllib3 rather than httpx: on this path it costs about a millisecond less per call.
    """
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = urllib3.PoolManager(
                    num_pools=64, maxsize=32, block=False, retries=False, timeout=_timeout()
                )
    return _client


MISS = object()


def get_target_local(name: str) -> Target | object:
    """get_target from this process's memory alone: MISS when the database must be asked."""
    target = _targets.get(name)
    if target is not None and time.monotonic() - target.loaded_at < TARGET_TTL:
        return target
    return MISS


def get_target(name: str, *, fresh: bool = False) -> Target | None:
    target = _targets.get(name)
    if target is not None and not fresh and time.monotonic() - target.loaded_at < TARGET_TTL:
        return target
    deployment = (
        Deployment.objects.select_related("version", "model", "shadow_version", "capture_policy")
        .filter(name=name)
        .first()
    )
    if deployment is None:
        _targets.pop(name, None)
        return None
    rollout = (
        Rollout.objects.filter(deployment=deployment, status=Rollout.Status.ACTIVE)
        .prefetch_related("candidates__version")
        .first()
    )
    versions = {deployment.version.number: deployment.version}
    weights: list[tuple[int, int]] = []
    if rollout is not None:
        for candidate in rollout.candidates.all():
            versions[candidate.version.number] = candidate.version
            weights.append((candidate.version.number, candidate.weight))
    shadow = deployment.shadow_version if deployment.shadow_percent else None
    if shadow is not None:
        versions[shadow.number] = shadow
    endpoints: dict[int, list[tuple[str, str]]] = {number: [] for number in versions}
    for replica, endpoint, number in (
        Replica.objects.filter(deployment=deployment, healthy=True, version_number__in=versions)
        .exclude(endpoint="")
        .order_by("index")
        .values_list("name", "endpoint", "version_number")
    ):
        endpoints[number].append((replica, endpoint))
    backends = {
        number: Backend(number, version.schema or {}, endpoints[number])
        for number, version in versions.items()
    }
    target = Target(
        id=deployment.pk,
        name=deployment.name,
        state=deployment.state,
        model_id=deployment.model_id,
        model_name=deployment.model.name,
        capture_percent=deployment.capture_percent,
        stable=backends[deployment.version.number],
        capture=_capture_policy(deployment) if deployment.capture_percent else None,
        headers=upstream_headers(deployment.name),
        rollout_id=rollout.pk if rollout is not None else None,
        candidates=[(backends[number], weight) for number, weight in weights],
        sticky_header=rollout.sticky_header.lower() if rollout is not None else "",
        shadow=backends[shadow.number] if shadow is not None else None,
        shadow_percent=deployment.shadow_percent if shadow is not None else 0,
    )
    _targets[name] = target
    return target


def _capture_policy(deployment: Deployment) -> dict[str, Any]:
    policy = getattr(deployment, "capture_policy", None)  # reverse one-to-one: may be absent
    if policy is None:
        return {"version": 0, "inputs": True, "outputs": True, "fields": {}}
    return {
        "version": policy.version,
        "inputs": policy.inputs,
        "outputs": policy.outputs,
        "fields": policy.fields,
    }


class UpstreamError(Exception):
    def __init__(self, status: int, message: str, replica: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.replica = status, message, replica


@dataclass
class Forwarded:
    body: dict[str, Any]
    replica: str
    upstream_ms: float


def forward(target: Target, backend: Backend, payload: bytes) -> Forwarded:
    """POST to one healthy replica of `backend`; on a refused connection try the next, then
    refresh the replica list once."""
    tried: set[str] = set()
    timed_out: UpstreamError | None = None
    for attempt in range(2):
        for replica, base in backend.next_endpoints(target.name):
            if replica in tried:
                continue
            tried.add(replica)
            started = time.perf_counter()
            try:
                response = pool(base).urlopen(
                    "POST", "/predict", body=payload, headers=target.headers
                )
            except urllib3.exceptions.TimeoutError as exc:
                # Predictions are pure: another replica may answer what this one did not.
                timed_out = UpstreamError(
                    504, f"the model did not answer in time ({exc.__class__.__name__})", replica
                )
                continue
            except urllib3.exceptions.HTTPError:
                continue  # refused or reset: this replica is gone, try another
            upstream_ms = (time.perf_counter() - started) * 1000
            outcome = interpret(response.status, response.data, replica, upstream_ms)
            if outcome is not None:
                return outcome
        if attempt == 0:
            backend = refreshed(get_target(target.name, fresh=True), backend)
    if timed_out is not None:
        raise timed_out
    raise UpstreamError(503, "no healthy replica could take the request")


def refreshed(target: Target | None, backend: Backend) -> Backend:
    """`backend` as a fresh view of its deployment has it (itself when that view has none)."""
    fresh = target.backend(backend.version_number) if target is not None else None
    return fresh or backend


def interpret(status: int, data: bytes, replica: str, upstream_ms: float) -> Forwarded | None:
    """A replica's answer: the result, an UpstreamError raised, or None to try the next one."""
    if status == 200:
        # A replica runs uploaded code: what it answers is parsed as carefully as a client's
        # body (not JSON, nested past the recursion limit or not an object -> 502, not 500).
        try:
            result = json.loads(data)
        except (ValueError, RecursionError):
            result = None
        if not isinstance(result, dict):
            raise UpstreamError(
                502, "the model answered something that is not a JSON object", replica
            )
        return Forwarded(result, replica, upstream_ms)
    text = data[:2000].decode("utf-8", "replace")
    try:
        message = json.loads(text).get("error", text[:500])
    except (ValueError, AttributeError, RecursionError):
        message = text[:500]
    if status in (400, 413, 422):
        raise UpstreamError(422, f"the model rejected the input: {message}", replica)
    if status == 503:
        return None
    raise UpstreamError(502, f"the model failed: {message}", replica)
