"""The process runtime: replicas as local processes, for machines without Docker.

A "build" is a virtual environment per pin set (shared by every model with the same pins,
like the Docker dependency layer) plus a build directory with the model file and the
server code. A replica is the model server started in its own session, with rlimits and
a minimal environment. Its state file lets a restarted portal find it again.

Layout::

    env_root/rt-<pins>/           the venv (bin/python, .complete written last)
    env_root/rt-<pins>.lock       one builder per pin set across processes
    state_root/builds/<tag>/      model.bin, server/, build.json
    state_root/replicas/<name>.json, <name>.log
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from deployments_app.runtimes.base import (
    BuildError,
    BuildResult,
    BuildSpec,
    LogFn,
    PrunedImage,
    ReplicaError,
    ReplicaLimits,
    ReplicaState,
    ReplicaStatus,
    copy_server,
    ensure_wheels,
    pip_env,
    probe_health,
    replica_name,
    slug,
)

STOP_GRACE_SECONDS = 10.0
START_PERIOD_SECONDS = 120.0  # like the image's HEALTHCHECK start period
LOCK_TIMEOUT = 1800.0


def build_tag(spec: BuildSpec) -> str:
    return f"{slug(spec.model)}-v{spec.version}-{spec.build_hash()[:12]}"


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError(f"timed out waiting for the lock {path}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _run(cmd: list[str], log: LogFn, what: str) -> None:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=1800, check=False, env=pip_env()
    )
    output = (proc.stdout + proc.stderr).strip().splitlines()
    for line in output:
        log(line)
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (exit {proc.returncode})", "\n".join(output[-20:]))


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _limit_resources(memory_mb: int) -> None:
    """Runs in the child before exec: cap its address space and core dumps."""
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class ProcessRuntime:
    """`Runtime` with local processes (no isolation beyond rlimits and its own session)."""

    name = "process"

    def __init__(self, *, state_root: Path, env_root: Path, python: str | None = None):
        self.state_root = Path(state_root)
        self.env_root = Path(env_root)
        self.python = python or sys.executable
        self._children: dict[int, subprocess.Popen] = {}  # reaped so they never linger as zombies

    # -- builds ----------------------------------------------------------------------

    def _venv_dir(self, spec: BuildSpec) -> Path:
        return self.env_root / f"rt-{spec.pins_hash()[:16]}"

    def _build_dir(self, tag: str) -> Path:
        return self.state_root / "builds" / tag

    def build(self, spec: BuildSpec, *, log: LogFn) -> BuildResult:
        started = time.monotonic()
        tag = build_tag(spec)
        build_dir = self._build_dir(tag)
        venv = self._venv_dir(spec)
        lines: list[str] = []

        def _log(line: str) -> None:
            lines.append(line)
            log(line)

        cached = (build_dir / "build.json").exists() and (venv / ".complete").exists()
        if not cached:
            self._ensure_venv(spec, venv, _log)
            self._write_build_dir(spec, tag, venv, build_dir)
        else:
            _log(f"build {tag} exists; nothing to build")
        return BuildResult(
            ref=tag,
            digest=spec.build_hash(),
            size_bytes=_dir_size(build_dir) + _dir_size(venv),
            log="\n".join(lines) + "\n",
            duration_s=round(time.monotonic() - started, 3),
            cached=cached,
        )

    def _ensure_venv(self, spec: BuildSpec, venv: Path, log: LogFn) -> None:
        with _file_lock(venv.with_name(venv.name + ".lock")):
            if (venv / ".complete").exists():
                log(f"environment {venv.name} exists")
                return
            shutil.rmtree(venv, ignore_errors=True)  # a half-built one from a crash
            reqs = self.env_root / f"{venv.name}.requirements.txt"
            reqs.write_text(spec.requirements_txt())
            ensure_wheels(reqs, Path(spec.wheelhouse), log)
            log(f"creating environment {venv}")
            _run([self.python, "-m", "venv", str(venv)], log, "python -m venv")
            _run(
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-cache-dir",
                    "--no-index",
                    "--find-links",
                    str(Path(spec.wheelhouse).resolve()),
                    "-r",
                    str(reqs),
                ],
                log,
                "pip install",
            )
            shutil.copyfile(reqs, venv / "requirements.txt")
            reqs.unlink()
            (venv / ".complete").write_text(spec.pins_hash() + "\n")

    def _write_build_dir(self, spec: BuildSpec, tag: str, venv: Path, build_dir: Path) -> None:
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{tag}-", dir=build_dir.parent))
        try:
            shutil.copyfile(spec.artifact_path, tmp / "model.bin")
            copy_server(Path(spec.server_dir), tmp / "server")
            _write_json(
                tmp / "build.json",
                {
                    "tag": tag,
                    "venv": str(venv),
                    "model": spec.model,
                    "version": spec.version,
                    "artifact_sha256": spec.artifact_sha256,
                    "env": spec.server_env(),
                    "labels": spec.extra_labels,
                },
            )
            if build_dir.exists():  # a concurrent build of the same tag won: same content
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, build_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove_image(self, ref: str) -> None:
        """Remove a build directory; the shared venv stays as the cache."""
        shutil.rmtree(self._build_dir(Path(ref).name), ignore_errors=True)

    def has_image(self, ref: str) -> bool:
        return (self._build_dir(Path(ref).name) / "build.json").is_file()

    def prune_images(self, keep: Collection[str], *, min_age_s: float) -> list[PrunedImage]:
        """Build directories not kept, not run by a live replica and older than `min_age_s`.
        The environments they point to are a machine-wide cache (PORTAL_ENV_CACHE) and stay."""
        keep = {Path(ref).name for ref in keep}
        for path in (self.state_root / "replicas").glob("*.json"):
            state = self._read_state(path.stem)
            if state is not None and self._alive(state):
                keep.add(str(state.get("build", "")))
        cutoff = time.time() - min_age_s
        pruned = []
        for build_dir in sorted((self.state_root / "builds").glob("*")):
            if build_dir.name.startswith(".") or build_dir.name in keep:
                continue  # "." : a build being written
            try:
                if build_dir.stat().st_mtime > cutoff:
                    continue
            except OSError:
                continue
            size = _dir_size(build_dir)
            shutil.rmtree(build_dir, ignore_errors=True)
            pruned.append(PrunedImage(build_dir.name, size))
        return pruned

    # -- replicas --------------------------------------------------------------------

    def _state_path(self, name: str) -> Path:
        return self.state_root / "replicas" / f"{name}.json"

    def _read_state(self, name: str) -> dict | None:
        try:
            return json.loads(self._state_path(name).read_text())
        except (OSError, ValueError):
            return None

    def _alive(self, state: dict) -> bool:
        """The pid lives, is not a zombie, and is our server (pids get reused)."""
        pid = int(state.get("pid") or 0)
        if pid <= 0:
            return False
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            self._children.pop(pid, None)
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return False
        return _cmdline(pid) == state.get("cmdline")

    def start_replica(
        self,
        *,
        deployment: str,
        index: int,
        build: BuildResult,
        spec: BuildSpec,
        limits: ReplicaLimits,
        publish_host: str,
    ) -> ReplicaStatus:
        name = replica_name(deployment, index)
        existing = self._read_state(name)
        if existing is not None:
            if existing.get("build") == build.ref and self._alive(existing):
                return self._status(name, existing)
            self.remove_replica(name)
        build_dir = self._build_dir(build.ref)
        try:
            info = json.loads((build_dir / "build.json").read_text())
        except (OSError, ValueError) as exc:
            raise ReplicaError(f"build {build.ref} is missing; build it first") from exc
        host = publish_host or "127.0.0.1"
        port = _free_port(host)
        python = str(Path(info["venv"]) / "bin" / "python")
        cmd = [
            python,
            str(build_dir / "server" / "server.py"),
            "--model",
            str(build_dir / "model.bin"),
            "--host",
            host,
            "--port",
            str(port),
        ]
        threads = str(max(1, math.ceil(limits.cpus)))
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(build_dir),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            # No cgroup here: keep the BLAS/OpenMP pools to the CPU share we were given.
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            **info["env"],
        }
        replicas = self.state_root / "replicas"
        replicas.mkdir(parents=True, exist_ok=True)
        log_path = replicas / f"{name}.log"
        with open(log_path, "ab") as log_fh:
            try:
                proc = subprocess.Popen(
                    cmd,
                    cwd=build_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=log_fh,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=lambda: _limit_resources(limits.memory_mb),  # noqa: PLW1509 - single-threaded caller
                )
            except OSError as exc:
                raise ReplicaError(f"cannot start {name}: {exc}") from exc
        self._children[proc.pid] = proc
        state = {
            "name": name,
            "pid": proc.pid,
            "cmdline": cmd,
            "host": host,
            "port": port,
            "build": build.ref,
            "version": spec.version,
            "deployment": deployment,
            "index": index,
            "started_at": time.time(),
            "log": str(log_path),
            "labels": spec.extra_labels,
        }
        _write_json(self._state_path(name), state)
        return self._status(name, state)

    def stop_replica(self, name: str) -> None:
        state = self._read_state(name)
        if state is None or not self._alive(state):
            return
        pid = int(state["pid"])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while self._alive(state) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._alive(state):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)

    def remove_replica(self, name: str) -> None:
        self.stop_replica(name)
        self._state_path(name).unlink(missing_ok=True)
        (self.state_root / "replicas" / f"{name}.log").unlink(missing_ok=True)

    def list_replicas(self, deployment: str | None = None) -> list[ReplicaStatus]:
        found = []
        for path in sorted((self.state_root / "replicas").glob("*.json")):
            state = self._read_state(path.stem)
            if state is None:
                continue
            if deployment is not None and state.get("deployment") != deployment:
                continue
            found.append(self._status(path.stem, state))
        return sorted(found, key=lambda s: (s.deployment, s.index))

    def replica(self, name: str) -> ReplicaStatus:
        state = self._read_state(name)
        if state is None:
            return ReplicaStatus(
                name=name,
                index=-1,
                deployment="",
                version=None,
                state="missing",
                healthy=False,
                endpoint=None,
                detail="no state file",
            )
        return self._status(name, state)

    def wait_healthy(self, status: ReplicaStatus, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            current = self.replica(status.name)
            if current.healthy:
                return True
            if current.state in ("exited", "missing") or time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def ping(self) -> bool:
        return True

    def _status(self, name: str, state: dict) -> ReplicaStatus:
        host = state.get("host", "127.0.0.1")
        if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached on loopback
            host = "127.0.0.1"
        endpoint = f"http://{f'[{host}]' if ':' in host else host}:{state.get('port')}"
        run_state: ReplicaState
        healthy = False
        if not self._alive(state):
            run_state, endpoint = "exited", None
            detail = "process is gone"
            tail = self._log_tail(state)
            if tail:
                detail += f"; last output: {tail}"
        elif probe_health(endpoint, timeout=0.5):
            run_state, healthy, detail = "running", True, f"pid {state['pid']}"
        elif time.time() - float(state.get("started_at", 0)) < START_PERIOD_SECONDS:
            run_state, detail = "starting", f"pid {state['pid']}, not answering yet"
        else:
            run_state, detail = "unhealthy", f"pid {state['pid']}, /health does not answer"
        return ReplicaStatus(
            name=name,
            index=int(state.get("index", -1)),
            deployment=str(state.get("deployment", "")),
            version=state.get("version"),
            state=run_state,
            healthy=healthy,
            endpoint=endpoint,
            detail=detail,
            ref=str(state.get("build", "")),
        )

    @staticmethod
    def _log_tail(state: dict, lines: int = 3) -> str:
        try:
            text = Path(state.get("log", "")).read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])
