"""Tests of the static model scanner (models_app.validation.scan / formats).

The fixtures are real models and must pass; every hostile file must be
rejected with a reason that names the offending global or the problem. The
hostile files are only written, never loaded: each payload would create
``marker`` in the test's folder, and every hostile test checks that it never
appears.
"""

from __future__ import annotations

import json
import pickle
import struct
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from models_app.validation.formats import detect_format
from models_app.validation.scan import ScanReport, check_global, scan_file
from tests.models_app import hostile

FIXTURES = [
    (
        "iris_rf_sklearn13.joblib",
        "joblib",
        None,
        "sklearn.ensemble._forest.RandomForestClassifier",
        1,
    ),
    ("house_price_linreg.pkl", "pickle", None, "sklearn.linear_model._base.LinearRegression", 1),
    ("breast_cancer_svc.joblib", "joblib", "zlib", "sklearn.pipeline.Pipeline", 1),
    ("spam_pipeline.joblib", "joblib", None, "sklearn.pipeline.Pipeline", 2),
    ("diabetes_gbr.skops", "skops", None, "sklearn.ensemble._gb.GradientBoostingRegressor", None),
]


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """Path every payload would create; it must still be absent afterwards."""
    path = tmp_path / "marker"
    yield path
    assert not path.exists(), "a payload ran: the scanner must never load the file"


def problems_text(report: ScanReport) -> str:
    return "\n".join(report.problems)


def assert_rejected(report: ScanReport, *needles: str) -> None:
    """Rejected, with every needle mentioned in an offence or error."""
    assert report.ok is False
    text = problems_text(report)
    assert text, "a rejection must say why"
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"


def offending_names(report: ScanReport) -> set[str]:
    return {offence.name for offence in report.offending}


# -- the real fixtures --------------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt", "compression", "estimator", "numpy_major"), FIXTURES)
def test_fixture_models_pass(
    fixture_copy, manifest, name, fmt, compression, estimator, numpy_major
) -> None:
    path = fixture_copy(name)
    report = scan_file(path)
    assert report.ok, problems_text(report)
    assert report.format == fmt == manifest[name]["format"]
    assert report.compression == compression
    assert report.sklearn_version == manifest[name]["sklearn_version"]
    assert report.estimator_class == estimator
    assert report.estimator_class.endswith("." + manifest[name]["estimator"])
    assert report.numpy_major == numpy_major
    assert report.offending == [] and report.errors == []
    assert report.streams == (0 if fmt == "skops" else 1)
    assert report.globals_found == sorted(report.globals_found)
    assert estimator in report.globals_found
    json.dumps(report.to_dict())  # storable as JSON


@pytest.mark.parametrize(("name", "fmt", "compression", "_estimator", "_np"), FIXTURES)
def test_fixture_format_detection(fixture_copy, name, fmt, compression, _estimator, _np) -> None:
    info = detect_format(fixture_copy(name))
    assert info.ok and info.format == fmt and info.compression == compression


def test_detection_ignores_the_file_name(fixture_copy, tmp_path) -> None:
    renamed = tmp_path / "model.pdf"
    fixture_copy("breast_cancer_svc.joblib").rename(renamed)
    info = detect_format(renamed)
    assert (info.format, info.compression) == ("joblib", "zlib")


def test_scans_are_fast(fixture_copy) -> None:
    paths = [fixture_copy(name) for name, *_ in FIXTURES]
    scan_file(paths[-1])  # first skops use imports scikit-learn; not the scan's cost
    for path in paths:
        start = time.perf_counter()
        assert scan_file(path).ok
        assert time.perf_counter() - start < 1.0, path.name


def test_skops_reports_vetted_untrusted_types(fixture_copy) -> None:
    report = scan_file(fixture_copy("diabetes_gbr.skops"))
    assert report.skops_untrusted_types == ["sklearn.tree._tree.Tree"]


def test_fixture_files_left_untouched(fixture_copy, manifest) -> None:
    from tests.conftest import FIXTURE_DIR

    for name in manifest:
        copy = fixture_copy(name)
        assert copy.read_bytes() == (FIXTURE_DIR / name).read_bytes()


# -- legitimate variations -----------------------------------------------------------


def test_plain_dict_scans_ok_without_estimator(tmp_path, marker) -> None:
    path = hostile.write(tmp_path / "d.pkl", pickle.dumps({"a": [1, 2.5, "x"], "b": None}))
    report = scan_file(path)
    assert report.ok, problems_text(report)
    assert report.estimator_class is None and report.sklearn_version is None


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_every_pickle_protocol_of_a_fixture_model(fixture_copy, tmp_path, protocol) -> None:
    # Re-pickling a known model under each protocol needs the model object:
    # build an equivalent small estimator instead of loading the fixture.
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0])
    path = hostile.write(tmp_path / f"p{protocol}.pkl", pickle.dumps(model, protocol=protocol))
    report = scan_file(path)
    assert report.ok, problems_text(report)
    assert report.format == "pickle"
    assert report.estimator_class == "sklearn.linear_model._base.LinearRegression"
    assert report.sklearn_version is not None


@pytest.mark.parametrize("compress", ["zlib", "gzip", "bz2", "xz", "lzma"])
def test_compressed_joblib_with_object_and_structured_arrays(tmp_path, compress) -> None:
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier

    model = DecisionTreeClassifier().fit(np.eye(4), [0, 1, 0, 1])
    model.feature_names_in_ = np.array(["a", "b", "c", "d"], dtype=object)
    path = hostile.joblib_dump(model, tmp_path / "m.joblib", compress=(compress, 3))
    report = scan_file(path)
    assert report.ok, problems_text(report)
    assert (report.format, report.compression) == ("joblib", compress)
    assert report.estimator_class == "sklearn.tree._classes.DecisionTreeClassifier"


def test_legacy_zfile_container(tmp_path) -> None:
    path = hostile.legacy_zfile(tmp_path / "old.pkl", pickle.dumps({"w": [1, 2]}, protocol=2))
    info = detect_format(path)
    assert info.legacy_zfile and info.compression == "zlib"
    assert scan_file(path).ok


def test_check_global_allowlist() -> None:
    assert check_global("sklearn.pipeline", "Pipeline") is None
    assert check_global("numpy._core.multiarray", "_reconstruct") is None
    assert check_global("scipy.sparse._csr", "csr_matrix") is None
    assert check_global("joblib.numpy_pickle", "NumpyArrayWrapper") is None
    assert check_global("_codecs", "encode") is None
    assert check_global("sklearn.svm._classes", "SVC") is None
    assert check_global("sklearn.metrics._scorer", "_Scorer") is None
    assert check_global("sklearn.tree._tree", "__pyx_unpickle_TreeBuilder") is None
    assert check_global("sklearn.metrics._regression", "r2_score") is None
    for module, name in [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("subprocess", "Popen"),
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("builtins", "open"),
        ("builtins", "compile"),
        ("runpy", "_run_code"),
        ("shutil", "rmtree"),
        ("webbrowser", "open"),
        ("importlib", "import_module"),
        ("codecs", "decode"),
        ("_codecs", "decode"),
        ("pickle", "loads"),
        ("marshal", "loads"),
        ("types", "FunctionType"),
        ("functools", "partial"),
        ("collections", "defaultdict"),  # calls its factory: an apply gadget
        ("operator", "attrgetter"),
        ("operator", "methodcaller"),
        ("socket", "socket"),
        ("sys", "modules"),
        ("ctypes", "CDLL"),
        ("sklearn.utils._testing", "assert_run_python_script"),
        ("sklearn.datasets", "fetch_openml"),
        ("sklearn.utils._response", "_get_response_values"),
        ("sklearn.base", "clone"),
        ("numpy", "load"),
        ("joblib", "load"),
        ("sklearn.base", "os.system"),
        ("numpy.core", "_ufunc_reconstruct"),
        # Foreign classes re-exported by scikit-learn modules, and constants.
        ("sklearn.callback._transport", "Client"),
        ("sklearn.datasets._base", "Path"),
        ("sklearn.utils._available_if", "MethodType"),
        ("sklearn.utils._joblib", "Memory"),
        ("sklearn.tree._tree", "TREE_LEAF"),
        ("sklearn.metrics._scorer", "_SCORERS"),
    ]:
        assert check_global(module, name), f"{module}.{name} must be refused"


# -- hostile pickles ------------------------------------------------------------------

REDUCE_PAYLOADS = [
    (hostile.os_system, "posix.system"),
    (hostile.subprocess_popen, "subprocess.Popen"),
    (hostile.builtins_eval, "builtins.eval"),
    (hostile.builtins_exec, "builtins.exec"),
    (hostile.runpy_run_code, "runpy._run_code"),
    (hostile.shutil_rmtree, "shutil.rmtree"),
    (hostile.webbrowser_open, "webbrowser.open"),
    (hostile.importlib_import, "importlib.import_module"),
    (hostile.codecs_eval, "_codecs.decode"),
    (hostile.functools_partial, "functools.partial"),
    (hostile.operator_attrgetter, "operator.attrgetter"),
]


@pytest.mark.security
@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize(
    ("make", "offender"), REDUCE_PAYLOADS, ids=[offender for _m, offender in REDUCE_PAYLOADS]
)
def test_reduce_payloads_rejected(tmp_path, marker, make, offender, protocol) -> None:
    path = hostile.write(tmp_path / "evil.pkl", hostile.dumps(make(marker), protocol))
    report = scan_file(path)
    assert_rejected(report, offender)
    assert offender in offending_names(report)
    assert offender in report.globals_found


def test_codecs_eval_names_both_globals(tmp_path, marker) -> None:
    path = hostile.write(tmp_path / "evil.pkl", hostile.dumps(hostile.codecs_eval(marker)))
    assert {"builtins.eval", "_codecs.decode"} <= offending_names(scan_file(path))


def test_partial_names_the_wrapped_call(tmp_path, marker) -> None:
    path = hostile.write(tmp_path / "evil.pkl", hostile.dumps(hostile.functools_partial(marker)))
    assert {"functools.partial", "posix.system"} <= offending_names(scan_file(path))


HAND_BUILT = [
    ("global", hostile.global_os_system, ["os.system"]),
    ("getattr_import", hostile.getattr_import, ["builtins.getattr", "builtins.__import__"]),
    ("stack_global_memo", hostile.stack_global_memo, ["os.system"]),
    ("inst", hostile.inst_os_system, ["os.system"]),
    ("obj", hostile.obj_os_system, ["os.system"]),
    ("dotted_name", hostile.dotted_name, ["sklearn.base.os.system", "dotted"]),
    ("ufunc_reconstruct", hostile.ufunc_reconstruct, ["numpy.core._ufunc_reconstruct"]),
    (
        "stack_global_computed",
        hostile.stack_global_computed,
        ["STACK_GLOBAL", "cannot be resolved"],
    ),
]


@pytest.mark.security
@pytest.mark.parametrize(
    ("label", "make", "needles"), HAND_BUILT, ids=[label for label, *_ in HAND_BUILT]
)
def test_hand_built_payloads_rejected(tmp_path, marker, label, make, needles) -> None:
    path = hostile.write(tmp_path / f"{label}.pkl", make(marker))
    assert_rejected(scan_file(path), *needles)


@pytest.mark.security
@pytest.mark.parametrize(
    ("label", "data", "needle"),
    [
        ("ext1", hostile.ext1(), "EXT1 1"),
        ("ext2", hostile.ext2(), "EXT2 513"),
        ("ext4", hostile.ext4(), "EXT4"),
        ("persid", hostile.persid(), "PERSID"),
        ("binpersid", hostile.binpersid(), "BINPERSID"),
        ("reduce_on_instance", hostile.reduce_on_instance(), "not an importable global"),
        ("build_on_class", hostile.build_on_class(), "sets the state of the global"),
    ],
)
def test_dangerous_opcodes_rejected(tmp_path, marker, label, data, needle) -> None:
    assert_rejected(scan_file(hostile.write(tmp_path / f"{label}.pkl", data)), needle)


@pytest.mark.security
def test_payload_appended_after_clean_pickle(fixture_copy, marker) -> None:
    path = fixture_copy("house_price_linreg.pkl")
    with open(path, "ab") as fh:
        fh.write(hostile.dumps(hostile.os_system(marker)))
    report = scan_file(path)
    assert_rejected(report, "posix.system", "2 pickle streams")
    assert report.streams == 2


@pytest.mark.security
def test_payload_appended_after_joblib_arrays(fixture_copy, marker) -> None:
    # The appended stream starts right after the last raw array block: only
    # a scanner that skips the arrays exactly finds it.
    path = fixture_copy("iris_rf_sklearn13.joblib")
    with open(path, "ab") as fh:
        fh.write(hostile.dumps(hostile.subprocess_popen(marker)))
    assert_rejected(scan_file(path), "subprocess.Popen")


@pytest.mark.security
def test_clean_pickle_appended_is_still_refused(fixture_copy) -> None:
    path = fixture_copy("house_price_linreg.pkl")
    path.write_bytes(path.read_bytes() * 2)
    assert_rejected(scan_file(path), "2 pickle streams")


@pytest.mark.security
def test_trailing_garbage_is_malformed(fixture_copy) -> None:
    path = fixture_copy("house_price_linreg.pkl")
    with open(path, "ab") as fh:
        fh.write(b"\xffgarbage after the model")
    assert_rejected(scan_file(path), "malformed", "not a valid pickle stream")


@pytest.mark.security
@pytest.mark.parametrize("compress", ["zlib", "gzip", "bz2", "xz", "lzma"])
def test_payload_inside_compressed_joblib(tmp_path, marker, compress) -> None:
    path = hostile.joblib_dump(
        {"model": hostile.os_system(marker)}, tmp_path / "evil.joblib", compress=(compress, 3)
    )
    report = scan_file(path)
    assert_rejected(report, "posix.system")
    assert (report.format, report.compression) == ("joblib", compress)


@pytest.mark.security
def test_payload_inside_legacy_zfile(tmp_path, marker) -> None:
    path = hostile.legacy_zfile(tmp_path / "old.pkl", hostile.dumps(hostile.os_system(marker), 2))
    assert_rejected(scan_file(path), "posix.system")


@pytest.mark.security
def test_joblib_array_hidden_in_frame(tmp_path) -> None:
    path = hostile.joblib_array_inside_frame(tmp_path / "frame.joblib")
    assert_rejected(scan_file(path), "inside a pickle frame")


# -- malformed, truncated, not a model ------------------------------------------------


@pytest.mark.parametrize(
    "name", ["house_price_linreg.pkl", "iris_rf_sklearn13.joblib", "spam_pipeline.joblib"]
)
def test_truncated_streams(fixture_copy, name) -> None:
    path = fixture_copy(name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_rejected(scan_file(path), "truncated")


def test_truncated_compressed_joblib(fixture_copy) -> None:
    path = fixture_copy("breast_cancer_svc.joblib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_rejected(scan_file(path), "truncated")


def test_unknown_opcode(tmp_path) -> None:
    path = hostile.write(tmp_path / "bad.pkl", b"\x80\x04\xff.")
    assert_rejected(scan_file(path), "unknown pickle opcode")


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (hostile.PDF, "looks like a PDF document"),
        (hostile.TEXT, "text file"),
        (b"", "empty"),
        (b"\x04\x22\x4d\x18" + bytes(32), "lz4"),
        (b"\x89PNG\r\n\x1a\n" + bytes(32), "PNG"),
    ],
)
def test_not_a_model(tmp_path, data, needle) -> None:
    path = hostile.write(tmp_path / "upload.pkl", data)
    report = scan_file(path)
    assert_rejected(report, needle)
    assert report.format is None
    assert not detect_format(path).ok


def test_pdf_message_names_the_bytes(tmp_path) -> None:
    info = detect_format(hostile.write(tmp_path / "m.pkl", hostile.PDF))
    assert info.message.startswith("file starts with b'%PDF-1.7")
    assert "not a pickle/joblib/skops model" in info.message


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed) -> None:
    path = hostile.write(tmp_path / "r.bin", hostile.random_bytes(seed=seed))
    report = scan_file(path)
    assert report.ok is False and report.problems


def test_zip_without_schema(tmp_path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.pkl", b"x")
    assert_rejected(scan_file(path), "zip archive without schema.json", "model.pkl")


# -- limits -----------------------------------------------------------------------------


@pytest.mark.security
def test_decompression_bomb(tmp_path) -> None:
    path = hostile.zlib_bomb(tmp_path / "bomb.joblib")
    assert path.stat().st_size < 2 * 1024**2
    start = time.perf_counter()
    report = scan_file(path, max_decompressed_bytes=50 * 1024**2)
    assert_rejected(report, "decompression bomb")
    assert report.decompressed_bytes <= 51 * 1024**2
    assert time.perf_counter() - start < 10


@pytest.mark.security
def test_decompression_ratio_bomb(tmp_path) -> None:
    path = hostile.xz_ratio_bomb(tmp_path / "bomb.joblib")
    assert_rejected(scan_file(path, max_ratio=100), "decompression bomb", "expands more than")


@pytest.mark.security
@pytest.mark.parametrize(
    ("label", "data", "needle"),
    [
        ("marks", hostile.mark_bomb(), "MARKs nested more than"),
        ("lists", hostile.nested_lists(), "nested more than"),
        ("memo", hostile.nested_via_memo(), "nested more than"),
    ],
)
def test_deep_nesting(tmp_path, label, data, needle) -> None:
    assert_rejected(scan_file(hostile.write(tmp_path / f"{label}.pkl", data)), needle)


@pytest.mark.security
def test_opcode_limit(tmp_path) -> None:
    data = b"\x80\x02]" + b"N" * 1000 + b"0" * 1000 + b"."
    assert_rejected(
        scan_file(hostile.write(tmp_path / "long.pkl", data), max_opcodes=500),
        "more than 500 pickle opcodes",
    )


@pytest.mark.security
def test_huge_declared_length_is_truncation_not_allocation(tmp_path) -> None:
    data = b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"tiny"
    assert_rejected(scan_file(hostile.write(tmp_path / "huge.pkl", data)), "truncated")


# -- skops ----------------------------------------------------------------------------------


@pytest.mark.security
def test_skops_untrusted_type(tmp_path, marker) -> None:
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "evil.skops"
    sio.dump(FunctionTransformer(func=os.system), path)
    report = scan_file(path)
    assert_rejected(report, "posix.system")
    assert report.format == "skops"


@pytest.mark.security
def test_skops_edited_schema(fixture_copy, tmp_path) -> None:
    source = fixture_copy("diabetes_gbr.skops")
    with zipfile.ZipFile(source) as archive:
        schema = json.loads(archive.read("schema.json"))
        members = {n: archive.read(n) for n in archive.namelist() if n != "schema.json"}
    schema["content"]["content"]["loss"] = {
        "__class__": "Popen",
        "__module__": "subprocess",
        "__loader__": "TypeNode",
        "__id__": 1,
    }
    path = hostile.skops_zip(tmp_path / "edited.skops", json.dumps(schema).encode(), members)
    assert_rejected(scan_file(path), "subprocess.Popen")


@pytest.mark.security
@pytest.mark.parametrize(
    "name", ["../../evil.py", "/etc/cron.d/evil", "C:/evil.txt", "a/../../evil"]
)
def test_skops_path_traversal(fixture_copy, tmp_path, name) -> None:
    with zipfile.ZipFile(fixture_copy("diabetes_gbr.skops")) as archive:
        schema = archive.read("schema.json")
    path = hostile.skops_zip(tmp_path / "trav.skops", schema, {name: b"x"})
    assert_rejected(scan_file(path), "parent-directory path")


@pytest.mark.security
def test_skops_zip_bomb(tmp_path) -> None:
    path = hostile.skops_zip(tmp_path / "bomb.skops", b"{}", big_entry=64 * 1024**2)
    report = scan_file(path, max_decompressed_bytes=50 * 1024**2)
    assert_rejected(report, "zip bomb")


def test_skops_bad_schema(tmp_path) -> None:
    path = hostile.skops_zip(tmp_path / "bad.skops", b"{not json")
    assert_rejected(scan_file(path), "schema.json is not valid JSON")
