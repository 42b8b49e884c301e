"""The process runtime: replicas as local processes, for machines without Docker.

A "build" is a virtual environment per pin set (shared by every model with the same pins,
like the Docker dependency layer) plus a build directory with the model file and the
server code. A replica is the model server started in its own session, with rlimits and
a minimal environment. Its state file lets a restarted portal find it again.

Replicas are contained like the validation sandbox (models_app/validation/isolation.py):
as root, each runs in new mount, PID and network namespaces (no network interface at all),
chrooted into a read-only root that holds only /usr, /etc, its interpreter, its venv and
its build (at /sandbox/in), under a uid of its own with no capabilities and no_new_privs.
It listens on a unix socket in a directory only root and that uid can enter (bound at
/run/portal), and answers only calls that carry its deployment's token. Without those
namespaces the runtime refuses to start a replica as root; a portal that is not root runs
replicas as itself, in user and network namespaces when the host allows them.

Layout::

    env_root/rt-<pins>/           the venv (bin/python, .complete written last)
    env_root/rt-<pins>.lock       one builder per pin set across processes
    state_root/builds/<tag>/      model.bin, server/, build.json
    state_root/replicas/<name>.json, <name>.log, <name>.root (the namespace's mount point)
    state_root/sockets/<hash>/    http.sock and token of one replica (0700, its uid)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from deployments_app.runtimes.base import (
    MODEL_KEY_FILE,
    REPLICA_SOCKET_DIR,
    SOCKET_NAME,
    TOKEN_FILE,
    USAGE_CACHE,
    BuildError,
    BuildResult,
    BuildSpec,
    LogFn,
    PrunedImage,
    ReplicaError,
    ReplicaLimits,
    ReplicaState,
    ReplicaStatus,
    ReplicaUsage,
    UsageSample,
    allowlist_command,
    copy_server,
    ensure_wheels,
    pip_env,
    prepare_socket_dir,
    probe_health,
    remove_socket_dir,
    replica_name,
    replica_socket_dir,
    replica_token,
    slug,
)
from models_app.validation.isolation import (
    NO_EXEC_SH,
    UNSHARE_USER,
    base_prefix,
    isolation,
    rootfs_argv,
    uid_task_count,
)

STOP_GRACE_SECONDS = 10.0
START_PERIOD_SECONDS = 120.0  # like the image's HEALTHCHECK start period
LOCK_TIMEOUT = 1800.0
# Replica uids: apart from the validation sandbox's (200000-299999), one per replica.
REPLICA_UID_RANGE = (300_000, 399_999)


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


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _limit_resources(memory_mb: int, processes: int | None) -> None:
    """Runs in the child before exec: cap its address space, core dumps and (for a replica
    with a uid of its own, which RLIMIT_NPROC counts alone) its processes."""
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


def _make_readable(build_dir: Path) -> None:
    """The replica's uid reads its build (bound read-only at /sandbox/in)."""
    for root, dirs, files in os.walk(build_dir):
        os.chmod(root, 0o755)  # noqa: S103 - read-only input of an unprivileged uid
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
        dirs[:] = [d for d in dirs if d != "__pycache__"]


class ProcessRuntime:
    """`Runtime` with local processes, each contained like the validation sandbox."""

    name = "process"

    def __init__(
        self,
        *,
        state_root: Path,
        env_root: Path,
        python: str | None = None,
        token_key: str | bytes | None = None,
    ):
        self.state_root = Path(state_root)
        self.env_root = Path(env_root)
        self.python = python or sys.executable
        # The portal passes its SECRET_KEY: replicas then answer only calls with their token.
        self.token_key = token_key
        self._children: dict[int, subprocess.Popen] = {}  # reaped so they never linger as zombies

    def replica_token(self, deployment: str) -> str:
        return replica_token(self.token_key, deployment)

    @property
    def socket_root(self) -> Path:
        return self.state_root / "sockets"

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
            # Trusted code only (no model file is read): the environment's allowlist.
            subprocess.run(
                allowlist_command(str(venv / "bin" / "python"), str(tmp / "server")),
                check=True,
                capture_output=True,
                timeout=300,
            )
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
            _make_readable(tmp)
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
            if (
                existing.get("build") == build.ref
                and existing.get("batching", "off") == limits.batching()
                and self._alive(existing)
            ):
                return self._status(name, existing)
            self.remove_replica(name)
        build_dir = self._build_dir(build.ref)
        try:
            info = json.loads((build_dir / "build.json").read_text())
        except (OSError, ValueError) as exc:
            raise ReplicaError(f"build {build.ref} is missing; build it first") from exc
        iso = isolation()
        mode = iso["mode"]
        if os.geteuid() == 0 and mode != "namespaces":
            raise ReplicaError(
                f"refusing to start {name} as root without isolation: the process runtime needs "
                "mount, PID and network namespaces (util-linux unshare, setpriv, chroot) to run "
                f"a model server unprivileged ({'; '.join(iso['notes']) or 'unavailable'}); "
                "use the docker runtime, or run the portal as an unprivileged user"
            )
        uid = self._free_uid() if mode == "namespaces" else os.getuid()
        token = self.replica_token(deployment)
        sock_dir = prepare_socket_dir(
            self.socket_root, name, uid=uid, token=token, model_key=spec.model_key
        )
        python = str(Path(info["venv"]) / "bin" / "python")
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
            **limits.server_env(),
        }
        replicas = self.state_root / "replicas"
        replicas.mkdir(parents=True, exist_ok=True)
        processes: int | None = None  # RLIMIT_NPROC would count the portal's own processes
        if mode == "namespaces":
            _make_readable(build_dir)
            newroot = replicas / f"{name}.root"
            newroot.mkdir(exist_ok=True)
            server = [
                python, "-s", "-B", "/sandbox/in/server/server.py",
                "--model", "/sandbox/in/model.bin", "--uds", f"{REPLICA_SOCKET_DIR}/{SOCKET_NAME}",
            ]  # fmt: skip
            if token:
                server += ["--token-file", f"{REPLICA_SOCKET_DIR}/{TOKEN_FILE}"]
            if spec.model_key:
                server += ["--key-file", f"{REPLICA_SOCKET_DIR}/{MODEL_KEY_FILE}"]
            venv = str(Path(info["venv"]).resolve())
            cmd = rootfs_argv(
                chroot=iso["chroot"],
                newroot=newroot,
                indir=build_dir,
                work=sock_dir,
                uid=uid,
                ro_binds=sorted({str(base_prefix(Path(python))), venv}),
                rw_binds=[(str(sock_dir), REPLICA_SOCKET_DIR)],
                command=server,
            )
            env.update(HOME="/sandbox/work", TMPDIR="/tmp")  # noqa: S108 - its own tmpfs
            processes = limits.pids
        else:
            cmd = [
                python, str(build_dir / "server" / "server.py"),
                "--model", str(build_dir / "model.bin"), "--uds", str(sock_dir / SOCKET_NAME),
            ]  # fmt: skip
            if token:
                cmd += ["--token-file", str(sock_dir / TOKEN_FILE)]
            if spec.model_key:
                cmd += ["--key-file", str(sock_dir / MODEL_KEY_FILE)]
            if mode == "userns":  # not root: network and PID namespaces at least
                cmd = [*UNSHARE_USER, *NO_EXEC_SH, *cmd]
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
                    preexec_fn=lambda: _limit_resources(limits.memory_mb, processes),  # noqa: PLW1509 - single-threaded caller
                )
            except OSError as exc:
                raise ReplicaError(f"cannot start {name}: {exc}") from exc
        self._children[proc.pid] = proc
        state = {
            "name": name,
            "pid": proc.pid,
            "cmdline": cmd,
            "socket": str(sock_dir / SOCKET_NAME),
            "uid": uid,
            "isolation": mode,
            "build": build.ref,
            "batching": limits.batching(),
            "memory_mb": limits.memory_mb,
            "version": spec.version,
            "deployment": deployment,
            "index": index,
            "started_at": time.time(),
            "log": str(log_path),
            "labels": spec.extra_labels,
        }
        _write_json(self._state_path(name), state)
        return self._status(name, state)

    def _free_uid(self) -> int:
        """A uid no process and no other replica of ours uses (RLIMIT_NPROC, signals and
        /proc access then concern this replica alone)."""
        taken = set()
        for path in (self.state_root / "replicas").glob("*.json"):
            state = self._read_state(path.stem)
            if state is not None and state.get("uid") is not None:
                taken.add(int(state["uid"]))
        for _ in range(100):
            uid = random.randint(*REPLICA_UID_RANGE)  # noqa: S311 - not a secret, just distinct
            if uid not in taken and uid_task_count(uid) == 0:
                return uid
        raise ReplicaError("no free uid for a replica")

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
        with contextlib.suppress(OSError):  # empty once its namespace is gone
            (self.state_root / "replicas" / f"{name}.root").rmdir()
        remove_socket_dir(self.socket_root, name)

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

    def replica_usage(self, name: str) -> ReplicaUsage | None:
        return USAGE_CACHE.get(f"process:{name}", lambda: self._usage_sample(name))

    def _usage_sample(self, name: str) -> UsageSample | None:
        """CPU time and resident memory of the server process from /proc (its memory limit
        is the address-space limit it was started with)."""
        state = self._read_state(name)
        if not state or not self._alive(state):
            return None
        pid = int(state["pid"])
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        rss = next((int(line.split()[1]) * 1024 for line in status.splitlines()
                    if line.startswith("VmRSS:")), None)  # fmt: skip
        limit = state.get("memory_mb")
        return UsageSample(cpu, rss, int(limit) * 1024 * 1024 if limit else None)

    def ping(self) -> bool:
        return True

    def _status(self, name: str, state: dict) -> ReplicaStatus:
        sock = state.get("socket") or str(replica_socket_dir(self.socket_root, name) / SOCKET_NAME)
        endpoint: str | None = f"unix:{sock}"
        token = self.replica_token(str(state.get("deployment", "")))
        run_state: ReplicaState
        healthy = False
        if not self._alive(state):
            run_state, endpoint = "exited", None
            detail = "process is gone"
            tail = self._log_tail(state)
            if tail:
                detail += f"; last output: {tail}"
        elif probe_health(endpoint, timeout=0.5, token=token):
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
