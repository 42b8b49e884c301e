"""Load an uploaded model in a contained child process and return its report.

:func:`run_inspection` runs ``inspect_model.py`` with the Python of the
environment built by :mod:`models_app.validation.envs` (the scikit-learn version
that wrote the model) and reads back one JSON report.  The child gets:

* an empty environment (minimal PATH, HOME in a fresh temp dir, one BLAS
  thread, no bytecode writes; OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE passed through
  when the parent has them), closed stdin, ``python -I`` (no PYTHON* variables,
  no user site);
* resource limits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE (files it
  writes, its stdout/stderr included), RLIMIT_NPROC, RLIMIT_NOFILE, no core files;
* a new session; the whole process group is SIGKILLed on timeout;
* the best isolation the host allows, detected once per process
  (:func:`isolation`):

  ``namespaces`` (we are root, util-linux unshare/setpriv/chroot present): new
      network namespace (no interface but a down loopback: no network at all),
      new PID namespace (when its first process dies every process in it dies,
      so nothing survives the timeout kill, not even a setsid() grandchild), new
      mount namespace with a minimal read-only root: /usr, /etc, the base Python
      and the model environment read-only, the model and options read-only in
      /sandbox/in, a writable /sandbox/work and /tmp (small tmpfs: the model cannot
      fill the host's disk, whatever the number of files); nothing else of the
      host (no /work, /root, /home, /var, other temp files).  The model then runs
      under an unprivileged uid chosen at random per run (so RLIMIT_NPROC counts
      only this run and concurrent runs cannot touch each other), with no
      capabilities and no_new_privs.
  ``userns`` (not root, unprivileged user namespaces allowed): network and PID
      namespaces only.
  ``none``: limits and a new session only; the report says the network was not cut.

Docker (``docker run --network none --read-only --cap-drop ALL ...``) was
considered and left out: the environments are host venvs whose ``bin/python``
points to the host's base interpreter (here under /root/.pyenv), which a base
image does not have at the same path, so a venv cannot just be mounted into a
container; Docker images are built from the wheelhouse for serving instead.  The
namespace sandbox above gives the same network/pid/filesystem containment for
the validation step without a daemon round trip.

What no sandbox can give: the report is produced by the same process that ran
the model's code, so a hostile model that gets to run code can forge it.  The
static scanner is what keeps code from running at all; this sandbox makes sure
that when something slips through it cannot reach the network, the portal's
files or secrets, or exhaust the worker.

No Django here: plain paths and arguments, usable from a Celery task.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .envs import EnvInfo
from .isolation import (
    NO_EXEC_SH,
    ROOTFS_SCRIPT,
    UNSHARE_ROOT,
    UNSHARE_USER,
    base_prefix,
    isolation,
    uid_task_count,
)

__all__ = ["SandboxError", "isolation", "run_inspection"]

INSPECT_SCRIPT = Path(__file__).with_name("inspect_model.py")
LOADER_FILES = ("policy.py", "safe_load.py")

MAX_REPORT_BYTES = 4 * 1024 * 1024
MAX_STDERR_BYTES = 64 * 1024
SANDBOX_UID_RANGE = (200_000, 299_999)
PASS_THROUGH_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not: the model failed)."""


# --------------------------------------------------------------------------- isolation

# The namespaces, read-only root and unprivileged uid live in .isolation, shared with the
# process runtime's replicas; these names are what run_inspection below uses.
_ROOTFS_SCRIPT = ROOTFS_SCRIPT
_UNSHARE_ROOT = UNSHARE_ROOT
_UNSHARE_USER = UNSHARE_USER
_NO_EXEC_SH = NO_EXEC_SH


# --------------------------------------------------------------------------- limits


_uid_task_count = uid_task_count


def _make_preexec(limits: dict[int, tuple[int, int]]):
    libc_name = ctypes.util.find_library("c")
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl if libc_name else None

    def preexec() -> None:  # runs in the child between fork and exec
        os.umask(0o077)
        for res, (soft, hard) in limits.items():
            resource.setrlimit(res, (soft, hard))
        if prctl is not None:
            prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            # A worker killed mid-validation takes its sandbox with it (nobody else would
            # enforce the timeout any more).
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


_base_prefix = base_prefix


# --------------------------------------------------------------------------- run


def _read_bounded(path: Path, limit: int, tail: bool = False) -> tuple[bytes, bool]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size > limit and tail:
            fh.seek(size - limit)
        data = fh.read(limit)
    return data, size > limit


def _explain_exit(returncode: int) -> str:
    sig = -returncode if returncode < 0 else (returncode - 128 if returncode > 128 else 0)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hints = {
            "SIGKILL": " (killed: memory or CPU limit, or a hard kill)",
            "SIGXCPU": " (CPU time limit exceeded)",
            "SIGXFSZ": " (file size limit exceeded)",
            "SIGSEGV": " (the interpreter crashed)",
        }
        return f"the inspection process died of {name}{hints.get(name, '')}"
    return f"the inspection process exited with status {returncode} without a report"


def _failure(error: str) -> dict[str, Any]:
    return {
        "ok": False,
        "error": error,
        "warnings": [],
        "estimator": None,
        "schema": {"n_features": None, "columns": None, "column_types": None},
        "smoke": None,
        "versions": {},
        "timings_ms": {},
    }


def run_inspection(
    model_path: str | os.PathLike[str],
    *,
    fmt: str,
    env: EnvInfo,
    example: list | None = None,
    columns: list | None = None,
    allowlist: str | os.PathLike[str] | None = None,
    loader_dir: str | os.PathLike[str] | None = None,
    timeout: float = 60,
    memory_mb: int = 1024,
    file_size_mb: int = 10,
    max_processes: int = 32,
    max_open_files: int = 128,
    max_rows: int = 100,
    sandbox_uid: int | None = None,
    extra_env: dict[str, str] | None = None,
    script_path: str | os.PathLike[str] | None = None,
    extra_options: dict[str, Any] | None = None,
    output: tuple[str, str | os.PathLike[str]] | None = None,
) -> dict[str, Any]:
    """Load ``model_path`` with ``env``'s Python in the sandbox; return the report.

    The returned dict is the JSON report of ``inspect_model.py`` (``ok``, ``error``,
    ``warnings``, ``estimator``, ``schema``, ``smoke``, ``versions``,
    ``timings_ms``) plus a ``sandbox`` entry: isolation used, limits, exit status,
    wall time, whether it timed out, and the (bounded) tail of standard error.
    A model that fails, crashes, hangs or hits a limit yields ``ok: False`` with a
    readable ``error``; :class:`SandboxError` is raised only when the sandbox
    itself cannot be set up.

    The model is loaded by ``safe_load.py`` (the restricted loader) under ``allowlist``
    (the environment's file from :func:`envs.ensure_allowlist`; enumerated inside the
    sandbox when None). ``loader_dir`` replaces the folder the loader is copied from:
    only tests use it, to prove the sandbox contains code that a broken loader let run.

    ``script_path`` runs another in-sandbox script of the same calling convention (MODEL
    FORMAT OPTIONS, one JSON report on stdout; e.g. onnx_convert.py), ``extra_options`` are
    merged into its options, and ``output=(name, dest)`` names the one file the script may write
    (in a writable, noexec /sandbox/out; its path is passed as option ``out``): copied to
    ``dest`` when it exists.
    """
    model_path = Path(model_path)
    if fmt not in ("pickle", "joblib", "skops"):
        raise ValueError(f"unknown model format {fmt!r}")
    if not model_path.is_file():
        raise SandboxError(f"model file not found: {model_path}")
    env_python = Path(env.python)
    if not env_python.exists():
        raise SandboxError(f"environment python not found: {env_python}")

    iso = isolation()
    mode = iso["mode"]
    uid = sandbox_uid if sandbox_uid is not None else random.randint(*SANDBOX_UID_RANGE)  # noqa: S311

    cpu = max(1, int(timeout) + 5)
    nproc = max_processes
    if mode != "namespaces" and os.geteuid() != 0:
        # RLIMIT_NPROC counts every process of our own uid: leave room for them.
        nproc = _uid_task_count(os.getuid()) + max_processes
    limits = {
        resource.RLIMIT_AS: (memory_mb * 1024 * 1024,) * 2,
        resource.RLIMIT_CPU: (cpu, cpu + 2),
        resource.RLIMIT_FSIZE: (file_size_mb * 1024 * 1024,) * 2,
        resource.RLIMIT_NPROC: (nproc, nproc),
        resource.RLIMIT_NOFILE: (max_open_files, max_open_files),
        resource.RLIMIT_CORE: (0, 0),
    }

    outer = Path(tempfile.mkdtemp(prefix="sandbox-"))
    try:
        indir, work, newroot = outer / "in", outer / "work", outer / "root"
        for d in (indir, work, newroot):
            d.mkdir()
        os.chmod(indir, 0o755)  # noqa: S103 - read-only input the sandbox uid must read
        target = indir / ("model" + "".join(model_path.suffixes[-1:]))
        shutil.copyfile(model_path, target)
        source = Path(script_path) if script_path is not None else INSPECT_SCRIPT
        script = indir / source.name
        shutil.copyfile(source, script)
        # The restricted loader, its policy and this environment's allowlist load the model.
        loader = [indir / name for name in LOADER_FILES]
        for f in loader:
            shutil.copyfile(Path(loader_dir or INSPECT_SCRIPT.parent) / f.name, f)
        listed = None
        if allowlist is not None:
            shutil.copyfile(allowlist, indir / "allowlist.json")
            loader.append(indir / "allowlist.json")
            listed = ("/sandbox/in" if mode == "namespaces" else str(indir)) + "/allowlist.json"
        options = indir / "options.json"
        opts = {"example": example, "columns": columns, "max_rows": max_rows,
                "allowlist": listed, **(extra_options or {})}  # fmt: skip
        outdir = outer / "out"  # writable (noexec) for the output file alone
        rw: list[str] = []
        if output is not None:
            outdir.mkdir()
            if mode == "namespaces":
                os.chown(outdir, uid, uid)
                rw = ["--rw", str(outdir), "/sandbox/out"]
            inside = "/sandbox/out" if mode == "namespaces" else str(outdir)
            opts["out"] = f"{inside}/{output[0]}"
        options.write_text(json.dumps(opts))
        for f in (target, script, options, *loader):
            os.chmod(f, 0o444)

        child_env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "LOKY_MAX_CPU_COUNT": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        for name in PASS_THROUGH_ENV:
            if name in os.environ:
                child_env[name] = os.environ[name]
        child_env.update(extra_env or {})

        if mode == "namespaces":
            os.chown(work, uid, uid)
            os.chmod(work, 0o700)
            child_env.update(HOME="/sandbox/work", TMPDIR="/tmp")  # noqa: S108 - its own tmpfs
            binds = sorted({str(_base_prefix(env_python)), str(Path(env.path).resolve())})
            inner = [str(env_python), "-I", "-B", "/sandbox/in/" + script.name,
                     "/sandbox/in/" + target.name, fmt, "/sandbox/in/options.json"]  # fmt: skip
            argv = [
                *_UNSHARE_ROOT, "/bin/sh", "-c", _ROOTFS_SCRIPT, "sh", iso["chroot"],
                str(newroot), str(indir), str(work), str(uid), str(len(binds)), *binds, *rw, *inner,
            ]  # fmt: skip
            cwd = str(work)
        else:
            child_env.update(HOME=str(work), TMPDIR=str(work))
            inner = [str(env_python), "-I", "-B", str(script), str(target), fmt, str(options)]
            argv = [*_UNSHARE_USER, *_NO_EXEC_SH, *inner] if mode == "userns" else inner
            cwd = str(work)

        stdout_path, stderr_path = outer / "stdout", outer / "stderr"
        started = time.monotonic()
        timed_out = False
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=cwd,
                    env=child_env,
                    close_fds=True,
                    start_new_session=True,
                    preexec_fn=_make_preexec(limits),  # noqa: PLW1509 - limits must be set in the child
                )
            except OSError as exc:
                raise SandboxError(f"could not start the sandbox: {exc}") from exc
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                returncode = proc.wait()
            # Anything left in the group (a child that outlived its parent) goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        if output is not None and (outdir / output[0]).is_file() and not timed_out:
            shutil.copyfile(outdir / output[0], output[1])

        raw, too_big = _read_bounded(stdout_path, MAX_REPORT_BYTES)
        stderr_raw, stderr_cut = _read_bounded(stderr_path, MAX_STDERR_BYTES, tail=True)
        stderr_text = stderr_raw.decode("utf-8", "replace")

        report: dict[str, Any] | None = None
        if timed_out:
            report = _failure(
                f"timeout: the inspection took longer than {timeout:g}s; "
                "its process group was killed"
            )
        elif too_big:
            report = _failure(f"the report exceeded {MAX_REPORT_BYTES} bytes")
        else:
            text = raw.decode("utf-8", "replace").strip()
            try:
                parsed = json.loads(text) if text else None
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and "ok" in parsed:
                report = parsed
            elif returncode != 0:
                report = _failure(_explain_exit(returncode))
            else:
                report = _failure("the inspection printed no valid report")
            if not report.get("ok"):
                report["error"] = _annotate(report.get("error") or "", memory_mb, file_size_mb)

        report["sandbox"] = {
            "isolation": iso,
            "uid": uid if mode == "namespaces" else os.getuid(),
            "limits": {
                "memory_mb": memory_mb,
                "cpu_seconds": cpu,
                "file_size_mb": file_size_mb,
                "processes": nproc,
                "open_files": max_open_files,
                "timeout_s": timeout,
            },
            "returncode": returncode,
            "timed_out": timed_out,
            "elapsed_ms": elapsed_ms,
            "stderr": stderr_text,
            "stderr_truncated": stderr_cut,
            "env_key": env.key,
        }
        return report
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def _annotate(error: str, memory_mb: int, file_size_mb: int) -> str:
    """Say which limit stopped the model when the raw error only hints at it."""
    if "MemoryError" in error or "Unable to allocate" in error:
        return f"{error} [memory limit of {memory_mb} MB exceeded]"
    if "File too large" in error or f"[Errno {errno.EFBIG}]" in error:
        return f"{error} [file size limit of {file_size_mb} MB exceeded]"
    if "Resource temporarily unavailable" in error or f"[Errno {errno.EAGAIN}]" in error:
        return f"{error} [process limit reached]"
    return error
