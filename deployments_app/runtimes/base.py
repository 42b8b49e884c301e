"""What every runtime backend takes and returns, and the `Runtime` protocol they share.

Plain dataclasses, no Django: services translate their rows into a `BuildSpec`, call a
backend, and store what comes back. Names are deterministic (image tag from the pins and
the artifact hash, replica `portal-<deployment>-<index>`) so a retried task finds the work
a previous attempt already did.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

LogFn = Callable[[str], None]
ReplicaState = Literal["running", "starting", "unhealthy", "exited", "missing"]

# What the model server itself needs beside the model's pins: uvicorn with the two
# compiled speedups it is configured to use (the useful half of `uvicorn[standard]`;
# the reload/websocket/yaml extras would only grow every image).
SERVER_REQUIREMENTS: dict[str, str] = {
    "uvicorn": "0.54.0",
    "uvloop": "0.23.0",
    "httptools": "0.9.0",
    # Decrypts the model (AES-256-GCM, models_app/validation/artifact_cipher.py) in memory.
    "cryptography": "50.0.2",
    "cffi": "2.1.1",
    "pycparser": "3.12",
}
# Files of the model server copied into a build (never __pycache__ or editor debris, so
# the copied layer depends on the code alone).
SERVER_FILES = ("server.py", "explain.py", "__main__.py", "__init__.py")
# The restricted loader and its policy, copied beside server.py: every replica loads its
# model through them (models_app/validation/safe_load.py), never with plain pickle.
LOADER_DIR = Path(__file__).resolve().parents[2] / "models_app" / "validation"
LOADER_FILES = ("policy.py", "safe_load.py", "artifact_cipher.py")
# The environment's exact allowlist, enumerated at build time inside the model's own
# environment (`safe_load.py --allowlist`), read by the server before it loads the model.
ALLOWLIST_FILE = "allowlist.json"
SERVER_PORT = 8080
RUNTIME_UID = 10001
# A replica listens on a unix socket in a directory of its own that only root (the portal)
# can reach; containers have no network at all. The proxy proves itself with a token
# derived from the portal's secret, read by the server from a file beside its socket.
REPLICA_SOCKET_DIR = "/run/portal"  # the directory as the replica sees it
SOCKET_NAME = "http.sock"
TOKEN_FILE = "token"  # noqa: S105 - a file name, not a secret
# The model's data key (hex), written beside the token for the server to decrypt its model
# in memory (MODEL_KEY_FILE): the image holds only the encrypted artifact.
MODEL_KEY_FILE = "model.key"
TOKEN_HEADER = "X-Portal-Replica-Token"  # noqa: S105 - a header name


class RuntimeBackendError(Exception):
    """Base of the errors a runtime backend raises."""


class BuildError(RuntimeBackendError):
    """A build failed; `log_tail` holds the last lines of its output."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail

    def __str__(self) -> str:
        return self.message


class ReplicaError(RuntimeBackendError):
    """A replica could not be started."""


@dataclass(frozen=True)
class BuildSpec:
    """Everything needed to build a servable unit for one model version."""

    deployment: str
    model: str
    version: int
    artifact_path: Path
    artifact_sha256: str
    fmt: str  # joblib | pickle | skops
    requirements: dict[str, str]  # exact pins: name -> version
    base_image: str
    wheelhouse: Path
    server_dir: Path
    columns: list[str] | None = None
    # Raw rows explanations compare with (the version's input example; MODEL_REFERENCE).
    reference: list | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)
    # The artifact's unwrapped data key, set only when replicas start (never for a build,
    # never hashed, labelled or logged): the runtime hands it over as a private file.
    model_key: bytes = field(default=b"", repr=False, compare=False)

    def all_requirements(self) -> dict[str, str]:
        """The model's pins plus the server's, sorted by canonical name."""
        merged = {canonical_name(k): v for k, v in SERVER_REQUIREMENTS.items()}
        merged.update({canonical_name(k): v for k, v in self.requirements.items()})
        return dict(sorted(merged.items()))

    def requirements_txt(self) -> str:
        return "".join(f"{name}=={ver}\n" for name, ver in self.all_requirements().items())

    def pins_hash(self) -> str:
        """Identifies the dependency set (and base image): equal hashes share a layer/venv."""
        payload = json.dumps({"base": self.base_image, "reqs": self.all_requirements()})
        return hashlib.sha256(payload.encode()).hexdigest()

    def build_hash(self) -> str:
        """Identifies the whole build: pins, artifact, server code and its settings."""
        payload = json.dumps(
            {
                "pins": self.pins_hash(),
                "artifact": self.artifact_sha256,
                "server": server_code_hash(self.server_dir),
                "fmt": self.fmt,
                "columns": self.columns,
                "reference": self.reference,
                "model": self.model,
                "version": self.version,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def server_env(self) -> dict[str, str]:
        """The model server's settings (see model_server/server.py)."""
        env = {
            "MODEL_FORMAT": self.fmt,
            "MODEL_NAME": self.model,
            "MODEL_VERSION": str(self.version),
        }
        if self.columns:
            env["MODEL_COLUMNS"] = json.dumps(self.columns)
        if self.reference:
            env["MODEL_REFERENCE"] = json.dumps(self.reference, separators=(",", ":"))
        return env


@dataclass(frozen=True)
class BuildResult:
    ref: str  # image tag, or the build directory tag for the process runtime
    digest: str  # image id, or the hash of the build
    size_bytes: int
    log: str
    duration_s: float
    cached: bool


@dataclass(frozen=True)
class PrunedImage:
    ref: str  # the tag (or build directory tag) removed
    size_bytes: int


@dataclass(frozen=True)
class ReplicaLimits:
    """What a replica is given at start (no rebuild): resources and its batching setting."""

    memory_mb: int = 512
    cpus: float = 1.0
    pids: int = 128
    tmpfs_mb: int = 64
    # Adaptive batching in the model server: most rows per predict call (0 or 1: off) and
    # how long an open batch may wait for more requests under concurrency.
    batch_max_size: int = 0
    batch_max_wait_ms: float = 0.0

    def batching(self) -> str:
        """A label for the setting ("off", or "64/2.0"): a replica started with another
        setting is replaced, not reused."""
        if self.batch_max_size <= 1:
            return "off"
        return f"{self.batch_max_size}/{float(self.batch_max_wait_ms)}"

    def server_env(self) -> dict[str, str]:
        """The model server's settings that come from these limits (see server.py)."""
        if self.batch_max_size <= 1:
            return {}
        return {
            "MODEL_BATCH_MAX_SIZE": str(self.batch_max_size),
            "MODEL_BATCH_MAX_WAIT_MS": str(float(self.batch_max_wait_ms)),
        }


@dataclass(frozen=True)
class ReplicaStatus:
    name: str
    index: int
    deployment: str
    version: int | None
    state: ReplicaState
    healthy: bool
    endpoint: str | None  # "http://host:port"
    detail: str = ""
    ref: str = ""  # the image (or build) it runs


@dataclass(frozen=True)
class ReplicaUsage:
    """What a replica uses now, as its runtime reports it (None: not known)."""

    cpu_percent: float | None  # of one CPU: 100 = one core busy
    memory_bytes: int | None
    memory_limit_bytes: int | None = None


@dataclass(frozen=True)
class UsageSample:
    cpu_seconds: float  # CPU time used since the replica started
    memory_bytes: int | None
    memory_limit_bytes: int | None = None


class UsageCache:
    """Keeps `replica_usage` cheap for every backend: an answer is reused for `ttl` seconds,
    and the CPU share is the CPU time between two samples over the time between them (the
    last one is kept per replica; without a recent one a second sample is taken after
    `gap` seconds)."""

    def __init__(self, ttl: float = 5.0, gap: float = 0.25, stale: float = 60.0) -> None:
        self.ttl, self.gap, self.stale = ttl, gap, stale
        self._answers: dict[str, tuple[float, ReplicaUsage | None]] = {}
        self._samples: dict[str, tuple[float, UsageSample]] = {}
        self._lock = threading.Lock()

    def get(self, name: str, sample: Callable[[], UsageSample | None]) -> ReplicaUsage | None:
        now = time.monotonic()
        with self._lock:
            cached = self._answers.get(name)
        if cached and now - cached[0] < self.ttl:
            return cached[1]
        current = sample()
        at = time.monotonic()
        with self._lock:
            previous = self._samples.get(name)
        if current is not None and (previous is None or at - previous[0] > self.stale):
            time.sleep(self.gap)
            previous, current = (at, current), sample()
            at = time.monotonic()
        answer = None
        if current is not None:
            cpu = None
            if previous is not None and at > previous[0]:
                used = current.cpu_seconds - previous[1].cpu_seconds
                cpu = round(100.0 * used / (at - previous[0]), 1) if used >= 0 else None
            answer = ReplicaUsage(cpu, current.memory_bytes, current.memory_limit_bytes)
            with self._lock:
                self._samples[name] = (at, current)
        with self._lock:
            self._answers[name] = (at, answer)
        return answer


# One per process: runtimes are made per call (get_runtime), their usage answers outlive them.
USAGE_CACHE = UsageCache()


@runtime_checkable
class Runtime(Protocol):
    """Builds servable units and runs replicas of them."""

    name: str

    def build(self, spec: BuildSpec, *, log: LogFn) -> BuildResult: ...

    def start_replica(
        self,
        *,
        deployment: str,
        index: int,
        build: BuildResult,
        spec: BuildSpec,
        limits: ReplicaLimits,
        publish_host: str,
    ) -> ReplicaStatus: ...

    def stop_replica(self, name: str) -> None: ...

    def remove_replica(self, name: str) -> None: ...

    def list_replicas(self, deployment: str | None = None) -> list[ReplicaStatus]: ...

    def wait_healthy(self, status: ReplicaStatus, timeout: float) -> bool: ...

    def remove_image(self, ref: str) -> None: ...

    def has_image(self, ref: str) -> bool: ...

    def prune_images(self, keep: Collection[str], *, min_age_s: float) -> list[PrunedImage]:
        """Remove this portal's images (builds) not in `keep`, not used by a replica and older
        than `min_age_s` (so that a build that has not been recorded yet is spared)."""
        ...

    def ping(self) -> bool: ...

    def replica_usage(self, name: str) -> ReplicaUsage | None:
        """CPU and memory of a running replica (cached a few seconds); None when it is not
        running or the runtime cannot tell."""
        ...


# --------------------------------------------------------------------------------------
# helpers shared by the backends
# --------------------------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def socket_path(endpoint: str | None) -> str | None:
    """The socket file of a `unix:/path` endpoint, else None."""
    if endpoint and endpoint.startswith("unix:"):
        return endpoint[len("unix:") :]
    return None


def replica_request(
    endpoint: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    token: str = "",
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One HTTP exchange with a replica (`unix:/path` or `http://host:port`): (status, body)."""
    sock = socket_path(endpoint)
    conn: http.client.HTTPConnection
    if sock is not None:
        conn = _UnixHTTPConnection(sock, timeout)
    else:
        parts = urllib.parse.urlsplit(endpoint)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers[TOKEN_HEADER] = token
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def probe_health(endpoint: str | None, timeout: float = 1.0, token: str = "") -> bool:
    """Does the replica at `endpoint` answer GET /health with 200 within `timeout` seconds?

    With the replica's token a replica started with another one (the portal's secret has
    changed) answers 401: not healthy, so the reconciler replaces it."""
    if not endpoint:
        return False
    try:
        status, _ = replica_request(endpoint, "GET", "/health", token=token, timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError):
        return False
    return status == 200


def replica_token(key: str | bytes | None, deployment: str) -> str:
    """The secret the proxy sends to `deployment`'s replicas: an HMAC of its name with the
    portal's key, so every process of the portal derives it and nothing stores it.
    No key (a runtime used outside the portal): no token."""
    if not key:
        return ""
    raw = key.encode() if isinstance(key, str) else key
    return hmac.new(raw, b"replica-token\0" + deployment.encode(), hashlib.sha256).hexdigest()


def replica_socket_dir(root: Path, name: str) -> Path:
    """The replica's own directory (short: a socket path must fit in 108 bytes)."""
    return Path(root) / hashlib.sha256(name.encode()).hexdigest()[:16]


def prepare_socket_dir(
    root: Path, name: str, *, uid: int, token: str, model_key: bytes = b""
) -> Path:
    """A fresh directory for one replica: reachable by root and `uid` only, with the token
    file and the model's key file (0400) the server reads. The root above it is 0700, so no
    other uid gets near the socket or the key."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    path = replica_socket_dir(root, name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    if token:
        token_path = path / TOKEN_FILE
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        if os.geteuid() == 0:
            os.chown(token_path, uid, uid)
    if model_key:
        key_path = path / MODEL_KEY_FILE
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as fh:
            fh.write(model_key.hex())
        if os.geteuid() == 0:
            os.chown(key_path, uid, uid)
    if os.geteuid() == 0:
        os.chown(path, uid, uid)
    return path


def remove_socket_dir(root: Path, name: str) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(replica_socket_dir(root, name))


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def slug(value: str, max_len: int = 60) -> str:
    """A lowercase name usable in image repositories, container names and file names."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    return cleaned[:max_len].strip("-") or "x"


DEFAULT_INSTANCE = "portal"


def replica_name(deployment: str, index: int, instance: str = DEFAULT_INSTANCE) -> str:
    """`<instance>-<deployment>-<index>`: portals sharing one engine never share a name."""
    return f"{instance}-{slug(deployment)}-{index}"


def _server_sources(server_dir: Path) -> list[tuple[str, Path]]:
    return [(name, Path(server_dir) / name) for name in SERVER_FILES] + [
        (name, LOADER_DIR / name) for name in LOADER_FILES
    ]


def server_code_hash(server_dir: Path) -> str:
    digest = hashlib.sha256()
    for name, path in _server_sources(server_dir):
        if path.exists():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def copy_server(server_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in _server_sources(server_dir):
        if src.exists():
            shutil.copyfile(src, dest / name)


def allowlist_command(python: str, server_dest: str) -> list[str]:
    """Enumerate the allowlist of `python`'s environment into the server directory."""
    return [python, "-I", f"{server_dest}/safe_load.py", "--allowlist",
            f"{server_dest}/{ALLOWLIST_FILE}"]  # fmt: skip


def pip_python() -> str:
    """The portal's own interpreter runs pip (download/copy wheels), never the model's."""
    venv_python = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def pip_env() -> dict[str, str]:
    """The caller's environment without find-links of its own: the wheelhouse we pass is the
    only source, so the same pins always resolve to the same wheels."""
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    return env


def _pip(args: list[str], log: LogFn, *, timeout: float = 1800) -> None:
    env = pip_env()
    proc = subprocess.run(
        [pip_python(), "-m", "pip", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    for line in output.splitlines():
        log(line)
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-20:])
        raise BuildError(f"pip {args[0]} failed (exit {proc.returncode})", tail)


def ensure_wheels(requirements_txt: Path, wheelhouse: Path, log: LogFn) -> None:
    """Download (binary only) whatever the pins need into the shared wheelhouse.

    A no-op, apart from an index look-up, when every wheel is already there.
    """
    wheelhouse = wheelhouse.resolve()
    wheelhouse.mkdir(parents=True, exist_ok=True)
    try:
        # Offline first: the common case needs no network at all.
        _pip(
            [
                "download",
                "--only-binary=:all:",
                "--no-index",
                "--find-links",
                str(wheelhouse),
                "-d",
                str(wheelhouse),
                "-r",
                str(requirements_txt),
            ],
            lambda _line: None,
        )
    except BuildError:
        log(f"downloading wheels into {wheelhouse}")
        _pip(
            [
                "download",
                "--only-binary=:all:",
                "--find-links",
                str(wheelhouse),
                "-d",
                str(wheelhouse),
                "-r",
                str(requirements_txt),
            ],
            log,
        )


def collect_wheels(requirements_txt: Path, wheelhouse: Path, dest: Path, log: LogFn) -> None:
    """Copy exactly the wheels this pin set resolves to from the wheelhouse into `dest`."""
    wheelhouse = wheelhouse.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    _pip(
        [
            "download",
            "--only-binary=:all:",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "-d",
            str(dest),
            "-r",
            str(requirements_txt),
        ],
        log,
    )
