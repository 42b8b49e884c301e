"""A cache of virtual environments, one per pinned dependency set.

An uploaded model must be loaded by the scikit-learn (and numpy) version that
wrote it.  :func:`resolve_requirements` turns what the static scanner reported
(scikit-learn version, numpy major version, file format) into a concrete, pinned
set of packages; :func:`ensure_env` builds (once) a virtual environment for that
set under ``root`` and returns it.

Layout::

    root/
      <key>/            the environment (bin/python, lib/, frozen.txt, ...)
      <key>/.complete   written last: an environment without it is not used
      <key>.lock        fcntl lock: one builder per key across processes
    wheelhouse/         every wheel ever downloaded, flat; ``pip install
                        --no-index --find-links wheelhouse -r <key>/frozen.txt``
                        rebuilds any cached environment offline (Docker images)

This module imports nothing from Django: it takes paths and callables so that a
Celery task, a management command or a test can use it alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EnvBuildError",
    "EnvInfo",
    "UnsupportedVersionError",
    "ensure_env",
    "env_key",
    "resolve_requirements",
]

LogFn = Callable[[str], None]

SKOPS_VERSION = "0.16.0"
FORMATS = ("pickle", "joblib", "skops")


class UnsupportedVersionError(ValueError):
    """No environment can faithfully load a model written by this combination."""


class EnvBuildError(RuntimeError):
    """pip or venv failed while building an environment."""


@dataclass(frozen=True)
class EnvInfo:
    path: Path
    python: Path
    key: str
    frozen: dict[str, str]
    requirements: dict[str, str] = field(default_factory=dict)
    built: bool = False  # True when this call built it (False: it came from the cache)
    build_seconds: float | None = None


# --------------------------------------------------------------------------- pins

# Known-good sets, checked against PyPI for cp311 manylinux wheels
# (``pip download --only-binary=:all:``) and by building and loading real models.
# Each row: numpy, scipy, joblib, threadpoolctl, pandas.
_NUMPY1_SKLEARN_13 = ("1.26.4", "1.11.4", "1.3.2", "3.5.0", "2.2.3")  # sklearn 1.1-1.3
_NUMPY1_SKLEARN_15 = ("1.26.4", "1.13.1", "1.4.2", "3.5.0", "2.2.3")  # sklearn 1.4-1.5
_NUMPY2_SKLEARN_15 = ("2.0.2", "1.14.1", "1.4.2", "3.5.0", "2.2.3")  # sklearn 1.4.2-1.5
_NUMPY1_SKLEARN_17 = ("1.26.4", "1.15.3", "1.5.3", "3.6.0", "2.2.3")  # sklearn 1.6-1.7
_NUMPY2_SKLEARN_17 = ("2.2.6", "1.15.3", "1.5.3", "3.6.0", "2.2.3")  # sklearn 1.6-1.7
_NUMPY1_SKLEARN_19 = ("1.26.4", "1.17.1", "1.6.0", "3.8.0", "2.3.3")  # sklearn 1.8+
_NUMPY2_SKLEARN_19 = ("2.4.6", "1.17.1", "1.6.0", "3.8.0", "3.1.1")  # sklearn 1.8+

# Used when the scanner could not tell which scikit-learn wrote the file.
DEFAULT_SKLEARN = "1.9.1"

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?((?:\.post\d+|rc\d+|\.dev\d+)*)$")


def _parse(version: str) -> tuple[int, int, int]:
    m = _VERSION_RE.match(version.strip())
    if not m:
        raise UnsupportedVersionError(f"not a scikit-learn version: {version!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def resolve_requirements(
    sklearn_version: str | None, numpy_major: int | None, fmt: str
) -> dict[str, str]:
    """Pinned package set able to load a model written by ``sklearn_version``.

    ``numpy_major`` is the numpy major version that pickled the arrays (1, 2 or
    None when unknown).  A numpy-2 pickle refers to ``numpy._core`` and cannot be
    read by numpy 1; a numpy-1 pickle is read by numpy 2, but we keep numpy 1
    whenever that scikit-learn supports it (the version that wrote it).

    pandas is always included: a ColumnTransformer that selects columns by name
    (e.g. a text column) only accepts a DataFrame, and the model server accepts
    records (``[{column: value}]``) that it turns into a DataFrame whose column
    names match ``feature_names_in_``.  It costs ~60-70 MB per environment.

    skops is only included for ``fmt == "skops"``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown model format {fmt!r}; expected one of {FORMATS}")
    if numpy_major not in (None, 1, 2):
        raise UnsupportedVersionError(f"unknown numpy major version {numpy_major!r}")
    version = (sklearn_version or "").strip() or DEFAULT_SKLEARN
    major, minor, patch = _parse(version)
    mm = (major, minor)

    if mm < (1, 1):
        # scikit-learn < 1.1 has no wheels for CPython 3.11.
        raise UnsupportedVersionError(
            f"scikit-learn {version} is too old: no build exists for Python 3.11 "
            "(re-save the model with scikit-learn >= 1.3)"
        )
    if mm <= (1, 3):
        if numpy_major == 2:
            raise UnsupportedVersionError(
                f"scikit-learn {version} does not run on numpy 2, but the file was "
                "written with numpy 2"
            )
        row = _NUMPY1_SKLEARN_13
    elif mm <= (1, 5):
        if numpy_major == 2:
            if mm == (1, 4) and patch < 2:
                # 1.4.0 / 1.4.1.post1 wheels were built against the numpy 1 ABI.
                raise UnsupportedVersionError(
                    f"scikit-learn {version} does not run on numpy 2 (1.4.2 is the "
                    "first that does), but the file was written with numpy 2"
                )
            row = _NUMPY2_SKLEARN_15
        else:
            row = _NUMPY1_SKLEARN_15
    elif mm <= (1, 7):
        row = _NUMPY1_SKLEARN_17 if numpy_major == 1 else _NUMPY2_SKLEARN_17
    else:
        # 1.8, 1.9 and anything newer (an unknown future version still gets pinned
        # exactly; pip then says clearly whether it exists).
        row = _NUMPY1_SKLEARN_19 if numpy_major == 1 else _NUMPY2_SKLEARN_19

    numpy_v, scipy_v, joblib_v, tpc_v, pandas_v = row
    reqs = {
        "scikit-learn": version,
        "numpy": numpy_v,
        "scipy": scipy_v,
        "joblib": joblib_v,
        "threadpoolctl": tpc_v,
        "pandas": pandas_v,
    }
    if fmt == "skops":
        if mm < (1, 2):
            raise UnsupportedVersionError(
                f"skops {SKOPS_VERSION} needs scikit-learn >= 1.2 (file says {version})"
            )
        reqs["skops"] = SKOPS_VERSION
    return reqs


# --------------------------------------------------------------------------- keys


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _python_tag(python: str) -> str:
    out = subprocess.run(
        [
            python,
            "-c",
            "import sys, platform; "
            "print(f'{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}"
            "-{platform.machine()}')",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


def env_key(reqs: dict[str, str], python_tag: str = "") -> str:
    """Short sha256 of the sorted pins (plus the interpreter, which the wheels depend on)."""
    lines = sorted(f"{_canon(n)}=={v}" for n, v in reqs.items())
    if python_tag:
        lines.append(f"python:{python_tag}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- build


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not lock {path} within {timeout:.0f}s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _pip_env(offline: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env.pop("PYTHONPATH", None)
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    if offline:
        # Ignore every pip configuration (global find-links, extra indexes...): the
        # install must succeed from the wheelhouse alone, as it will in a Docker build.
        for name in list(env):
            if name.startswith("PIP_") and name != "PIP_DISABLE_PIP_VERSION_CHECK":
                del env[name]
        env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _run(cmd: list[str], log: LogFn, *, env: dict[str, str] | None = None, timeout: float) -> str:
    log("$ " + " ".join(cmd))
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        log(line)
        if time.monotonic() > deadline:
            proc.kill()
            break
    try:
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(lines[-25:])
        raise EnvBuildError(f"command failed (exit {rc}): {' '.join(cmd)}\n{tail}")
    return "\n".join(lines)


def _parse_freeze(text: str) -> dict[str, str]:
    frozen: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            frozen[_canon(name)] = version.strip()
    return frozen


def _load(env_dir: Path, key: str, reqs: dict[str, str]) -> EnvInfo:
    frozen_file = env_dir / "frozen.txt"
    frozen = _parse_freeze(frozen_file.read_text()) if frozen_file.exists() else {}
    meta_file = env_dir / "env.json"
    build_seconds = None
    if meta_file.exists():
        with contextlib.suppress(ValueError):
            build_seconds = json.loads(meta_file.read_text()).get("build_seconds")
    return EnvInfo(
        path=env_dir,
        python=env_dir / "bin" / "python",
        key=key,
        frozen=frozen,
        requirements=dict(reqs),
        built=False,
        build_seconds=build_seconds,
    )


def ensure_env(
    reqs: dict[str, str],
    *,
    root: str | os.PathLike[str],
    wheelhouse: str | os.PathLike[str],
    python: str = sys.executable,
    log: LogFn | None = None,
    timeout: float = 1800.0,
    lock_timeout: float = 3600.0,
) -> EnvInfo:
    """Return the cached environment for ``reqs``, building it first if needed.

    The build is: wheels downloaded into ``wheelhouse`` (binary only), a venv
    created next to the final place, the pins installed with ``--no-index
    --find-links wheelhouse`` (so the wheelhouse alone is proven sufficient),
    ``pip freeze`` written to ``frozen.txt``, the directory renamed into place
    and ``.complete`` written.  A file lock on ``root/<key>.lock`` makes a second
    process wait for the first instead of building the same set twice.

    ``log`` receives pip's output line by line (progress for the user).
    """
    log = log or (lambda _line: None)
    root_p = Path(root).resolve()
    wheels_p = Path(wheelhouse).resolve()
    root_p.mkdir(parents=True, exist_ok=True)
    wheels_p.mkdir(parents=True, exist_ok=True)

    key = env_key(reqs, _python_tag(python))
    env_dir = root_p / key
    if (env_dir / ".complete").exists():
        return _load(env_dir, key, reqs)

    with _file_lock(root_p / f"{key}.lock", lock_timeout):
        if (env_dir / ".complete").exists():  # another worker built it meanwhile
            log(f"environment {key} was built by another process")
            return _load(env_dir, key, reqs)
        started = time.monotonic()
        if env_dir.exists():  # left over by a crash between rename and marker
            shutil.rmtree(env_dir)
        pins = [f"{name}=={version}" for name, version in reqs.items()]
        log(f"building environment {key}: {' '.join(pins)}")

        build_dir = Path(tempfile.mkdtemp(prefix=f".{key}.build-", dir=root_p))
        try:
            venv_dir = build_dir / "env"
            _run([python, "-m", "venv", "--without-pip", str(venv_dir)], log, timeout=300)
            venv_py = str(venv_dir / "bin" / "python")
            pip = [sys.executable, "-m", "pip", "--python", venv_py]

            # 1. wheels -> a private download dir, then moved one by one into the
            # shared wheelhouse (os.replace: a concurrent reader never sees half a file).
            dl_dir = build_dir / "download"
            dl_dir.mkdir()
            _run(
                [
                    *pip, "download", "--only-binary=:all:", "--progress-bar", "off",
                    "--find-links", str(wheels_p), "--dest", str(dl_dir), *pins,
                ],
                log,
                env=_pip_env(offline=False),
                timeout=timeout,
            )  # fmt: skip
            for wheel in dl_dir.iterdir():
                target = wheels_p / wheel.name
                if not target.exists():
                    os.replace(wheel, target)

            # 2. install from the wheelhouse alone.
            _run(
                [
                    *pip, "install", "--no-index", "--only-binary=:all:", "--progress-bar",
                    "off", "--find-links", str(wheels_p), *pins,
                ],
                log,
                env=_pip_env(offline=True),
                timeout=timeout,
            )  # fmt: skip

            # 3. record exactly what is installed.
            freeze = subprocess.run(
                [*pip, "freeze", "--all"],
                check=True,
                capture_output=True,
                text=True,
                env=_pip_env(offline=True),
                timeout=300,
            ).stdout
            (venv_dir / "frozen.txt").write_text(freeze)
            (venv_dir / "requirements.txt").write_text("\n".join(pins) + "\n")
            build_seconds = round(time.monotonic() - started, 1)
            (venv_dir / "env.json").write_text(
                json.dumps(
                    {"key": key, "requirements": reqs, "build_seconds": build_seconds},
                    indent=1,
                )
            )
            os.rename(venv_dir, env_dir)
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
        (env_dir / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        log(f"environment {key} ready in {build_seconds:.0f}s")

    info = _load(env_dir, key, reqs)
    return EnvInfo(
        path=info.path,
        python=info.python,
        key=key,
        frozen=info.frozen,
        requirements=dict(reqs),
        built=True,
        build_seconds=build_seconds,
    )


# --------------------------------------------------------------------------- allowlist

_LOADER = ("policy.py", "safe_load.py")


def ensure_allowlist(env: EnvInfo, *, timeout: float = 600.0) -> Path:
    """The environment's exact allowlist (``safe_load.py --allowlist``), cached beside it.

    Enumerated by the environment's own Python from its real objects (no model file is
    read). The file name carries a hash of the policy and loader, so a policy change is
    enumerated again.
    """
    here = Path(__file__).parent
    digest = hashlib.sha256(b"".join((here / name).read_bytes() for name in _LOADER))
    path = Path(env.path) / f"allowlist-{digest.hexdigest()[:16]}.json"
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory(prefix="allowlist-") as tmp:
        for name in _LOADER:
            shutil.copyfile(here / name, Path(tmp) / name)
        proc = subprocess.run(
            [str(env.python), "-I", str(Path(tmp) / "safe_load.py"), "--allowlist", str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={
                "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "OPENBLAS_NUM_THREADS": "1",
                **{k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_CORE")},
                **{k: v for k, v in os.environ.items() if k == "OPENBLAS_L2_SIZE"},
            },
        )
    if proc.returncode != 0 or not path.is_file():
        raise EnvBuildError(
            f"could not enumerate the allowlist of {env.path}: {proc.stderr[-2000:]}"
        )
    return path
