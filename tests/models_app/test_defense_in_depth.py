"""Issue 11: no uploaded file runs code anywhere, even when the scanner is wrong.

Every hostile file made of allowed names only (tests/models_app/hostile.py,
``ALLOWED_NAME_PAYLOADS``) is refused at each layer on its own:

1. the scanner plus the environment's exact allowlist (what the pipeline gates on);
2. the restricted loader (safe_load.py) with the scan skipped, in this process;
3. the sandbox's loader (the real namespace sandbox, scan skipped);
4. the model server (server.py started on the file in the model's environment, scan skipped).

A marker file never appears. Benign files still load: every default-constructible
estimator of this scikit-learn, pickled and joblib-dumped, round-trips through the
scanner and the loader with identical predictions; the fixtures of three scikit-learn
versions are covered by the sandbox, registry and deployment tests, which all load
through the same loader now.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest

from deployments_app.runtimes.base import ALLOWLIST_FILE, copy_server
from models_app.validation import policy, safe_load
from models_app.validation.envs import ensure_allowlist
from models_app.validation.sandbox import run_inspection
from models_app.validation.scan import scan_file
from tests.models_app import hostile
from tests.models_app.test_sandbox import env_for

pytestmark = pytest.mark.security
PAYLOADS = hostile.ALLOWED_NAME_PAYLOADS
SERVER_DIR = Path(__file__).resolve().parents[2] / "deployments_app" / "model_server"


@pytest.fixture(scope="module")
def env19():
    """The environment of the scikit-learn the payloads claim (built once, cached)."""
    return env_for(hostile.SKLEARN_VERSION, 2, "joblib")


@pytest.fixture(scope="module")
def allowlist19(env19):
    path = ensure_allowlist(env19)
    return path, json.loads(path.read_text())


def _write(tmp_path: Path, name: str) -> tuple[Path, Path, str, str]:
    make, fmt, needle = PAYLOADS[name]
    marker = tmp_path / f"marker-{name}"
    path = tmp_path / (name + (".joblib" if fmt == "joblib" else ".pkl"))
    path.write_bytes(make(marker))
    return path, marker, fmt, needle


# --------------------------------------------------------------------------- the policy


def test_allowlist_names_real_objects_and_no_re_exports(allowlist19):
    _path, allowlist = allowlist19
    names = allowlist["names"]
    assert allowlist["versions"]["scikit-learn"] == hostile.SKLEARN_VERSION
    for public in (
        "sklearn.linear_model._base.LinearRegression",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.pipeline.Pipeline",
        "sklearn.tree._tree.Tree",
        "numpy.ndarray",
        "joblib.numpy_pickle.NumpyArrayWrapper",
    ):
        assert public in names, public
    # Re-exports (abc's metaclass, pathlib), side-effecting classes, apply gadgets: absent.
    for absent in (
        "sklearn.naive_bayes.ABCMeta",
        "sklearn.callback._scoring_monitor.ScoringMonitor",
        "collections.defaultdict",
        "builtins.getattr",
    ):
        assert absent not in names, absent
    # Every class entry is named by its real module and qualified name (checked in the
    # environment that wrote the list, here re-checked in this one where it matches).
    same = allowlist["versions"]["numpy"] == np.__version__
    for full, entry in names.items():
        if entry["kind"] == "class" and full.startswith("sklearn.") and same:
            obj = safe_load._try_resolve(full)
            if obj is not None:
                assert safe_load._pickled_name(obj) == full
                assert not issubclass(obj, type), f"{full} is a metaclass"


def test_dunder_str_subclass_and_method_keys_are_refused_by_the_policy():
    allowlist = {"names": {"m.C": {"kind": "class", "setstate": "dict", "methods": ["predict"]}}}
    assert policy.check_state("m.C", ["coef_", "_sklearn_version"], allowlist) is None
    assert "special attribute" in policy.check_state("m.C", ["__class__"], allowlist)
    assert "shadow the method" in policy.check_state("m.C", ["predict"], allowlist)
    assert "not a plain str" in policy.check_state("m.C", [np.str_("coef_")], allowlist)
    assert policy.check_wrapper_fields(["subclass", "shape", "order", "dtype"]) is None
    assert "read_array" in policy.check_wrapper_fields(
        ["subclass", "shape", "order", "dtype", "read_array"]
    )


# --------------------------------------------------------------------------- layer 1


@pytest.mark.parametrize("name", sorted(set(PAYLOADS) - {"file_reading_vectorizer"}))
def test_scanner_and_exact_allowlist_refuse(tmp_path, allowlist19, name):
    path, marker, _fmt, _needle = _write(tmp_path, name)
    report = scan_file(path)
    problems = report.problems + policy.check_scanned(
        report.globals_found, report.called, report.state_keys, allowlist19[1]
    )
    assert problems, f"{name} passed the scan and the allowlist"
    assert not marker.exists()


def test_file_reading_vectorizer_passes_the_scan_but_not_validation(tmp_path, allowlist19):
    """Its names are all legitimate; what is wrong is a parameter, refused at load time."""
    path, _marker, _fmt, _needle = _write(tmp_path, "file_reading_vectorizer")
    report = scan_file(path)
    assert report.ok
    assert not policy.check_scanned(
        report.globals_found, report.called, report.state_keys, allowlist19[1]
    )


# --------------------------------------------------------------------------- layer 2


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_restricted_loader_refuses_with_the_scan_skipped(tmp_path, name):
    path, marker, fmt, needle = _write(tmp_path, name)
    with pytest.raises(safe_load.UnsafeModelError) as caught:
        safe_load.load_model(str(path), fmt, allowlist=safe_load.load_allowlist())
    assert needle in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["lying_dtype", "second_build"])
def test_the_joblib_payloads_are_real_attacks_when_loaded_plainly(tmp_path, name):
    """The control: plain joblib.load (what the server did before) runs their payload."""
    path, marker, _fmt, _needle = _write(tmp_path, name)
    code = f"import joblib\ntry:\n    joblib.load({str(path)!r})\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True, capture_output=True)
    assert marker.exists(), "the payload is not an attack: the test proves nothing"


# --------------------------------------------------------------------------- layers 3, 4


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_sandbox_loader_refuses_with_the_scan_skipped(tmp_path, env19, allowlist19, name):
    path, marker, fmt, needle = _write(tmp_path, name)
    report = run_inspection(path, fmt=fmt, env=env19, allowlist=allowlist19[0], timeout=60)
    assert not report["ok"]
    assert "refused by the loader" in report["error"] and needle in report["error"]
    assert not marker.exists()


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory, env19, allowlist19):
    """The model server as a replica runs it: server.py, the loader and the allowlist."""
    dest = tmp_path_factory.mktemp("server")
    copy_server(SERVER_DIR, dest)
    shutil.copyfile(allowlist19[0], dest / ALLOWLIST_FILE)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_model_server_refuses_with_the_scan_skipped(tmp_path, env19, server_dir, name):
    path, marker, fmt, needle = _write(tmp_path, name)
    proc = subprocess.run(
        [str(env19.python), "-I", str(server_dir / "server.py"), "--model", str(path),
         "--format", fmt, "--name", "hostile", "--version", "1", "--port", "0"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "load_failed" in proc.stderr and "refused by the loader" in proc.stderr
    assert needle in proc.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------- benign files


def _fitted_estimators():
    from sklearn.utils import all_estimators

    rng = np.random.RandomState(0)
    X = rng.rand(40, 4)
    y = (X[:, 0] > 0.5).astype(int)
    for name, cls in all_estimators():
        try:
            est = cls()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                classifier = getattr(est, "_estimator_type", "") == "classifier"
                try:
                    est.fit(X, y if classifier else X[:, 1] * 3)
                except Exception:  # noqa: BLE001 - unsupervised ones take X alone
                    est.fit(X)
        except Exception:  # noqa: BLE001, S112 - needs parameters (meta-estimators) or data
            continue
        yield name, est, X


def _outputs(est, X):
    for method in ("predict", "transform", "predict_proba", "decision_function", "score_samples"):
        if hasattr(est, method):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return np.asarray(getattr(est, method)(X))
            except Exception:  # noqa: BLE001, S112 - e.g. transductive estimators
                continue
    return None


@pytest.mark.slow
def test_every_default_estimator_round_trips_through_scanner_and_loader(tmp_path):
    allowlist = safe_load.load_allowlist()
    loaded = 0
    for name, est, X in _fitted_estimators():
        expected = _outputs(est, X)
        for kind in ("pickle", "joblib", "joblib-zlib"):
            path = tmp_path / f"{name}.{kind}"
            if kind == "pickle":
                path.write_bytes(pickle.dumps(est, protocol=5))
            else:
                joblib.dump(est, path, compress=3 if kind == "joblib-zlib" else 0)
            report = scan_file(path)
            problems = report.problems + policy.check_scanned(
                report.globals_found, report.called, report.state_keys, allowlist
            )
            assert not problems, (name, kind, problems)
            fmt = "pickle" if kind == "pickle" else "joblib"
            model = safe_load.load_model(str(path), fmt, allowlist=allowlist)
            got = _outputs(model, X)
            if expected is not None and expected.dtype.kind in "biuf":
                np.testing.assert_allclose(got, expected, err_msg=f"{name} {kind}")
            loaded += 1
    assert loaded > 300  # about 130 estimators fit with their defaults here, x 3 formats
