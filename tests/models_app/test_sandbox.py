"""The environment cache and the model-loading sandbox, for real.

The environments are built with pip from PyPI the first time (about 30 s each)
into a cache that survives test runs: PORTAL_ENV_CACHE (default <repo>/var/envs)
and PORTAL_WHEELHOUSE (default <repo>/var/wheels).  Later runs reuse them.

The hostile pickles below run code on purpose: they test the sandbox's
containment, not the static scanner that normally stops them first.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from models_app.validation.envs import (
    EnvInfo,
    UnsupportedVersionError,
    ensure_env,
    env_key,
    resolve_requirements,
)
from models_app.validation.sandbox import isolation, run_inspection

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DIR = REPO.parent / "shared" / "fixtures" / "models"
if not FIXTURE_DIR.exists():  # CI lays shared/ beside the clone; a session has it at /work/shared
    FIXTURE_DIR = Path("/work/shared/fixtures/models")
ENV_CACHE = Path(os.environ.get("PORTAL_ENV_CACHE") or REPO / "var" / "envs")
WHEELHOUSE = Path(os.environ.get("PORTAL_WHEELHOUSE") or REPO / "var" / "wheels")

MANIFEST = json.loads((FIXTURE_DIR / "manifest.json").read_text())
BY_NAME = {m["name"]: m for m in MANIFEST}


# --------------------------------------------------------------------------- helpers

_envs: dict[tuple, EnvInfo] = {}


def env_for(sklearn_version: str, numpy_major: int | None, fmt: str) -> EnvInfo:
    key = (sklearn_version, numpy_major, fmt)
    if key not in _envs:
        reqs = resolve_requirements(sklearn_version, numpy_major, fmt)
        _envs[key] = ensure_env(reqs, root=ENV_CACHE, wheelhouse=WHEELHOUSE, log=print)
    return _envs[key]


def env_for_fixture(m: dict) -> EnvInfo:
    return env_for(m["sklearn_version"], int(m["numpy_version"].split(".")[0]), m["format"])


def copy_fixture(m: dict, tmp_path: Path) -> Path:
    target = tmp_path / m["file"]
    shutil.copyfile(FIXTURE_DIR / m["file"], target)
    return target


class _Hostile:
    """Unpickling this runs ``code`` (pickle calls exec(code) to rebuild it)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def hostile_pickle(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "hostile.pkl"
    path.write_bytes(pickle.dumps(_Hostile(code)))
    return path


# The sandbox is the last layer: these tests prove it contains code that got past the
# scanner *and* the restricted loader, so they run it with a loader that trusts the file.
BROKEN_LOADER = """import os  # noqa: F401 - the hostile code's exec() runs with these globals
import pickle
import sys  # noqa: F401


def load_allowlist(path=None):
    return {}


def load_model(path, fmt, *, allowlist=None):
    with open(path, "rb") as fh:
        return pickle.load(fh)
"""


def run_broken_loader(path: Path, **kwargs) -> dict:
    loader = path.parent / "broken-loader"
    loader.mkdir(exist_ok=True)
    (loader / "safe_load.py").write_text(BROKEN_LOADER)
    (loader / "policy.py").write_text("")
    return run_inspection(path, loader_dir=loader, **kwargs)


def uid_processes(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


# --------------------------------------------------------------------------- pins (fast)


def test_pins_follow_the_writer_versions():
    r13 = resolve_requirements("1.3.2", 1, "joblib")
    assert r13["scikit-learn"] == "1.3.2" and r13["numpy"] == "1.26.4"
    assert r13["scipy"] == "1.11.4" and "skops" not in r13
    assert resolve_requirements("1.3.2", None, "pickle")["numpy"] == "1.26.4"
    assert resolve_requirements("1.5.2", 1, "pickle")["numpy"] == "1.26.4"
    assert resolve_requirements("1.5.2", None, "pickle")["numpy"] == "1.26.4"
    assert resolve_requirements("1.5.2", 2, "pickle")["numpy"] == "2.0.2"
    assert resolve_requirements("1.9.1", 2, "joblib")["numpy"] == "2.4.6"
    assert resolve_requirements("1.9.1", None, "joblib")["numpy"] == "2.4.6"
    assert resolve_requirements("1.9.1", 1, "joblib")["numpy"] == "1.26.4"
    assert resolve_requirements("1.6.1", 2, "joblib")["numpy"].startswith("2.")
    assert resolve_requirements("1.9.1", 2, "skops")["skops"] == "0.16.0"
    assert resolve_requirements("1.3.2", 1, "skops")["skops"] == "0.16.0"
    for reqs in (r13, resolve_requirements("1.9.1", 2, "skops")):
        assert {"pandas", "joblib", "threadpoolctl", "scipy"} <= set(reqs)
    # unknown: a sensible default rather than a guess from nothing
    assert resolve_requirements(None, None, "joblib")["scikit-learn"] == "1.9.1"


def test_impossible_combinations_are_refused():
    with pytest.raises(UnsupportedVersionError):
        resolve_requirements("1.3.2", 2, "joblib")  # numpy-2 pickle, numpy-1-only sklearn
    with pytest.raises(UnsupportedVersionError):
        resolve_requirements("1.4.1.post1", 2, "joblib")
    with pytest.raises(UnsupportedVersionError):
        resolve_requirements("0.24.2", 1, "pickle")  # no cp311 wheels
    with pytest.raises(UnsupportedVersionError):
        resolve_requirements("not-a-version", 1, "pickle")
    with pytest.raises(ValueError):
        resolve_requirements("1.5.2", 1, "onnx")


def test_env_key_is_stable_and_order_independent():
    a = env_key({"numpy": "1.26.4", "scikit-learn": "1.3.2"}, "cpython3.11-x86_64")
    b = env_key({"scikit-learn": "1.3.2", "numpy": "1.26.4"}, "cpython3.11-x86_64")
    c = env_key({"scikit-learn": "1.3.2", "numpy": "1.26.4"}, "cpython3.12-x86_64")
    assert a == b != c and len(a) == 16


# --------------------------------------------------------------------------- env cache


@pytest.mark.slow
def test_ensure_env_builds_once_under_a_lock(tmp_path):
    """Two processes asking for the same new env: one builds, the other waits for it."""
    reqs = {"threadpoolctl": "3.5.0"}
    script = (
        f"import json, sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from models_app.validation.envs import ensure_env\n"
        f"e = ensure_env({reqs!r}, root={str(tmp_path / 'envs')!r},"
        f" wheelhouse={str(WHEELHOUSE)!r})\n"
        "print(json.dumps({'built': e.built, 'key': e.key}))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["key"] == results[1]["key"]
    info = ensure_env(reqs, root=tmp_path / "envs", wheelhouse=WHEELHOUSE)
    assert not info.built and info.frozen["threadpoolctl"] == "3.5.0"
    assert (info.path / ".complete").exists() and (info.path / "frozen.txt").exists()
    assert not [p for p in (tmp_path / "envs").iterdir() if ".build-" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sklearn_version", "numpy_major", "fmt"),
    [("1.3.2", 1, "joblib"), ("1.5.2", 1, "pickle"), ("1.9.1", 2, "joblib"), ("1.9.1", 2, "skops")],
)
def test_fixture_envs_have_the_pinned_versions(sklearn_version, numpy_major, fmt):
    env = env_for(sklearn_version, numpy_major, fmt)
    reqs = resolve_requirements(sklearn_version, numpy_major, fmt)
    for name, version in reqs.items():
        assert env.frozen[name] == version, name
    assert (env.path / ".complete").exists()
    # everything the env holds is in the wheelhouse: a Docker build needs nothing else
    wheels = {p.name.split("-")[0].lower().replace("_", "-") for p in WHEELHOUSE.glob("*.whl")}
    assert set(env.frozen) <= wheels


# --------------------------------------------------------------------------- fixtures


@pytest.mark.slow
@pytest.mark.parametrize("name", [m["name"] for m in MANIFEST])
def test_fixture_models_load_and_predict_in_their_own_version(name, tmp_path):
    m = BY_NAME[name]
    env = env_for_fixture(m)
    model = copy_fixture(m, tmp_path)
    report = run_inspection(
        model, fmt=m["format"], env=env, example=m["input_example"], columns=m["columns"]
    )
    assert report["ok"], (report["error"], report["sandbox"]["stderr"])
    assert report["error"] is None
    assert report["versions"]["scikit-learn"] == m["sklearn_version"]
    assert report["versions"]["numpy"] == m["numpy_version"]
    assert not [w for w in report["warnings"] if w["category"] == "InconsistentVersionWarning"]

    expected = m["expected_predict"]
    got = report["smoke"]["predictions"]
    assert len(got) == len(expected)
    if all(isinstance(v, int) for v in expected):
        assert got == expected
    else:
        assert np.allclose(got, expected)
    if m.get("expected_predict_proba") is not None:
        assert np.allclose(report["smoke"]["probabilities"], m["expected_predict_proba"])
        assert report["estimator"]["has_predict_proba"]

    est = report["estimator"]
    assert est["class"].rsplit(".", 1)[-1] == m["estimator"]
    task = {"classification": "classifier", "regression": "regressor"}[m["task"]]
    assert est["task"] == task
    schema = report["schema"]
    assert schema["n_features"] == len(m["input_example"][0])
    assert schema["columns"] == m["columns"]
    assert report["timings_ms"]["load"] >= 0 and report["timings_ms"]["predict"] >= 0
    assert FIXTURE_DIR.joinpath(m["file"]).exists()  # the original is untouched


@pytest.mark.slow
def test_schema_tells_text_columns_from_numeric(tmp_path):
    iris = run_inspection(
        copy_fixture(BY_NAME["iris"], tmp_path),
        fmt="joblib",
        env=env_for_fixture(BY_NAME["iris"]),
        example=BY_NAME["iris"]["input_example"],
    )
    assert iris["schema"]["n_features"] == 4
    assert len(iris["schema"]["columns"]) == 4
    assert set(iris["schema"]["column_types"].values()) == {"number"}

    spam = run_inspection(
        copy_fixture(BY_NAME["spam"], tmp_path),
        fmt="joblib",
        env=env_for_fixture(BY_NAME["spam"]),
        example=None,  # synthetic row: "example" strings for the text columns
    )
    assert spam["ok"], spam["error"]
    assert spam["schema"]["columns"] == ["content", "sender"]
    assert spam["schema"]["column_types"] == {"content": "string", "sender": "string"}
    assert spam["smoke"]["synthetic"] and spam["smoke"]["input"] == [["example", "example"]]
    assert spam["estimator"]["steps"][0]["class"].endswith("ColumnTransformer")
    assert spam["estimator"]["classes"] == [0, 1]


@pytest.mark.slow
def test_synthetic_row_when_no_example(tmp_path):
    m = BY_NAME["breast-cancer"]
    report = run_inspection(copy_fixture(m, tmp_path), fmt="joblib", env=env_for_fixture(m))
    assert report["ok"], report["error"]
    assert report["smoke"]["input"] == [[0.0] * 30]
    assert len(report["smoke"]["predictions"]) == 1


@pytest.mark.slow
def test_wrong_version_is_reported(tmp_path):
    """iris was written by 1.3.2: loading it with 1.9.1 is what the version pinning avoids."""
    m = BY_NAME["iris"]
    report = run_inspection(
        copy_fixture(m, tmp_path),
        fmt="joblib",
        env=env_for("1.9.1", 2, "joblib"),
        example=m["input_example"],
    )
    inconsistent = [w for w in report["warnings"] if w["category"] == "InconsistentVersionWarning"]
    assert inconsistent, report
    assert "1.3.2" in inconsistent[0]["message"] and "1.9.1" in inconsistent[0]["message"]
    assert inconsistent[0]["phase"] == "load"


@pytest.mark.slow
def test_skops_pins_work_with_old_sklearn(tmp_path):
    """skops 0.16 with scikit-learn 1.3.2: dump a model in that env, load it in the sandbox."""
    env = env_for("1.3.2", 1, "skops")
    model = tmp_path / "old.skops"
    code = (
        "import skops.io as sio\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "X = [[0.0, 1.0], [1.0, 0.0], [0.0, 0.9], [0.9, 0.1]]\n"
        "m = LogisticRegression().fit(X, [0, 1, 0, 1])\n"
        f"sio.dump(m, {str(model)!r})\n"
    )
    subprocess.run([str(env.python), "-I", "-c", code], check=True, timeout=120)
    report = run_inspection(model, fmt="skops", env=env, example=[[0.0, 1.0], [1.0, 0.0]])
    assert report["ok"], (report["error"], report["sandbox"]["stderr"])
    assert report["smoke"]["predictions"] == [0, 1]
    assert report["versions"]["skops"] == "0.16.0"


@pytest.mark.slow
def test_non_estimator_is_rejected(tmp_path):
    path = tmp_path / "dict.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    report = run_inspection(path, fmt="pickle", env=env_for("1.5.2", 1, "pickle"))
    assert not report["ok"]
    assert "not an estimator" in report["error"] and "dict" in report["error"]


# --------------------------------------------------------------------------- hostile code


@pytest.fixture
def hostile_env():
    return env_for("1.5.2", 1, "pickle")


@pytest.mark.slow
@pytest.mark.security
def test_network_is_cut_off(tmp_path, hostile_env):
    if not isolation()["network_cut"]:
        pytest.skip("this host allows no network namespace: " + "; ".join(isolation()["notes"]))
    # A listener on the host's loopback: reachable from any host process, not from the sandbox.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "print('interfaces:', socket.if_nameindex())\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "raise RuntimeError('CONNECTED')\n"
    )
    report = run_broken_loader(hostile_pickle(tmp_path, code), fmt="pickle", env=hostile_env)
    with pytest.raises(OSError):
        server.accept()  # nobody came
    server.close()
    assert not report["ok"]
    assert "CONNECTED" not in report["error"]
    assert "OSError" in report["error"] or "unreachable" in report["error"].lower()
    assert "(1, 'lo')" in report["sandbox"]["stderr"]  # loopback only, and it is down


@pytest.mark.slow
@pytest.mark.security
def test_memory_limit_stops_a_4gb_allocation(tmp_path, hostile_env):
    code = "blob = bytearray(4 * 1024 ** 3)\n"
    report = run_broken_loader(
        hostile_pickle(tmp_path, code), fmt="pickle", env=hostile_env, memory_mb=1024
    )
    assert not report["ok"]
    assert "MemoryError" in report["error"]
    assert "memory limit of 1024 MB exceeded" in report["error"]
    assert report["sandbox"]["limits"]["memory_mb"] == 1024


@pytest.mark.slow
@pytest.mark.security
def test_endless_sleep_times_out_and_nothing_survives(tmp_path, hostile_env):
    uid = 271_828
    # It also forks a child that leaves the process group (setsid) and sleeps on.
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(10 ** 6)\n"
        "time.sleep(10 ** 6)\n"
    )
    started = time.monotonic()
    report = run_broken_loader(
        hostile_pickle(tmp_path, code), fmt="pickle", env=hostile_env, timeout=3, sandbox_uid=uid
    )
    assert time.monotonic() - started < 15
    assert not report["ok"] and report["sandbox"]["timed_out"]
    assert report["error"].startswith("timeout")
    if isolation()["pid_namespace"]:
        deadline = time.monotonic() + 5
        while uid_processes(uid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert uid_processes(uid) == []


@pytest.mark.slow
@pytest.mark.security
def test_file_size_limit_stops_a_100mb_file(tmp_path, hostile_env):
    code = (
        "with open('big.bin', 'wb') as fh:\n"
        "    for _ in range(100):\n"
        "        fh.write(b'\\0' * 1024 * 1024)\n"
    )
    report = run_broken_loader(
        hostile_pickle(tmp_path, code), fmt="pickle", env=hostile_env, file_size_mb=10
    )
    assert not report["ok"]
    assert "File too large" in report["error"]
    assert "file size limit of 10 MB exceeded" in report["error"]


@pytest.mark.slow
@pytest.mark.security
def test_environment_holds_no_secrets(tmp_path, hostile_env, monkeypatch):
    monkeypatch.setenv("PORTAL_SECRET_KEY", "canary-s3cr3t-value")
    monkeypatch.setenv("DATABASE_URL", "postgres://portal:canary-pw@db/portal")
    code = "import os, json\nraise RuntimeError(json.dumps(dict(os.environ)))\n"
    report = run_broken_loader(hostile_pickle(tmp_path, code), fmt="pickle", env=hostile_env)
    assert not report["ok"]
    assert "OPENBLAS_NUM_THREADS" in report["error"]  # it did dump its environment
    dumped = json.dumps(report)
    assert "canary" not in dumped
    assert "PORTAL_SECRET_KEY" not in dumped and "DATABASE_URL" not in dumped


@pytest.mark.slow
@pytest.mark.security
def test_host_files_are_out_of_sight(tmp_path, hostile_env):
    if not isolation()["private_filesystem"]:
        pytest.skip("no private filesystem view on this host")
    code = (
        "import os\n"
        f"seen = [os.path.exists(p) for p in ({str(REPO / 'pyproject.toml')!r}, "
        f"{str(FIXTURE_DIR)!r}, '/root/.ssh', '/home', '/var')]\n"
        f"repo = sorted(os.listdir({str(REPO)!r})) if os.path.isdir({str(REPO)!r}) else []\n"
        "top, root = sorted(os.listdir('/')), sorted(os.listdir('/root'))\n"
        "raise RuntimeError(repr((seen, top, root, repo)))\n"
    )
    report = run_broken_loader(hostile_pickle(tmp_path, code), fmt="pickle", env=hostile_env)
    assert "RuntimeError: " in report["error"], report
    seen, top, root, repo = ast.literal_eval(report["error"].split("RuntimeError: ", 1)[1])
    assert seen == [False] * 5, report["error"]
    assert "sandbox" in top and "home" not in top and "var" not in top
    assert repo in ([], ["var"])  # at most the path down to the environment itself
    assert root in ([], [".pyenv"])  # at most the base interpreter, nothing else of /root


@pytest.mark.slow
@pytest.mark.security
def test_model_output_on_stdout_cannot_break_the_report(tmp_path, hostile_env):
    code = "import os\nprint('{\"ok\": true}')\nos.write(1, b'garbage')\nx = 1\n"
    report = run_broken_loader(hostile_pickle(tmp_path, code), fmt="pickle", env=hostile_env)
    # exec() returns None: a NoneType is no estimator; the prints went to stderr
    assert not report["ok"] and "not an estimator" in report["error"]
    assert "garbage" in report["sandbox"]["stderr"]


@pytest.mark.slow
@pytest.mark.security
def test_fork_bomb_is_capped_by_the_process_limit(tmp_path, hostile_env):
    if not isolation()["unprivileged_uid"]:
        pytest.skip("RLIMIT_NPROC is only tight when the model runs under its own uid")
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(500):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    raise RuntimeError(f'forked {n}: {exc}') from None\n"
        "raise RuntimeError(f'forked {n}')\n"
    )
    uid = 271_829
    report = run_broken_loader(
        hostile_pickle(tmp_path, code),
        fmt="pickle",
        env=hostile_env,
        max_processes=16,
        sandbox_uid=uid,
    )
    assert "process limit reached" in report["error"], report["error"]
    assert "forked 15" in report["error"]
    time.sleep(0.5)
    assert uid_processes(uid) == []  # the sleeping children died with the namespace


@pytest.mark.slow
@pytest.mark.security
def test_many_small_files_cannot_fill_the_disk(tmp_path, hostile_env):
    if not isolation()["private_filesystem"]:
        pytest.skip("the work dir is on the host disk without a private filesystem view")
    code = (
        "for i in range(100):\n"
        "    with open(f'part{i}.bin', 'wb') as fh:\n"
        "        fh.write(b'\\0' * 5 * 1024 * 1024)\n"
    )
    report = run_broken_loader(hostile_pickle(tmp_path, code), fmt="pickle", env=hostile_env)
    assert not report["ok"]
    assert "No space left on device" in report["error"]


def test_isolation_finds_chroot_outside_a_minimal_path(monkeypatch):
    """A service or `env -i` PATH without /usr/sbin still gets the namespace sandbox."""
    from models_app.validation import isolation as iso

    full = iso.isolation(refresh=True)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    try:
        assert iso.isolation(refresh=True)["mode"] == full["mode"]
    finally:
        monkeypatch.undo()
        iso.isolation(refresh=True)
