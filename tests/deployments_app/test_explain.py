"""Explanations (deployments_app/model_server/explain.py), inside each model's own environment.

Each fixture model is loaded the way a replica loads it (server.load_model through the
restricted loader, server.ModelState) by tests/deployments_app/explain_probe.py, run with the
Python of the environment the portal builds for that model (scikit-learn 1.3.2, 1.5.2 or
1.9.1). The probe computes the model's outputs itself, independently of explain.py, so the
checks below compare explain.py's numbers with the model's own.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deployments_app.model_server import explain
from models_app.validation.envs import ensure_allowlist
from tests.models_app.test_sandbox import env_for, env_for_fixture

REPO = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO / "deployments_app" / "model_server"
PROBE = Path(__file__).with_name("explain_probe.py")
FIXTURES = Path("/work/shared/fixtures/models")
TOLERANCE = explain.SUM_TOLERANCE


def _manifest() -> dict[str, dict]:
    return {e["name"]: e for e in json.loads((FIXTURES / "manifest.json").read_text())}


def _probe(env, job: dict) -> dict:
    proc = subprocess.run(
        [str(env.python), str(PROBE)],
        input=json.dumps({**job, "server_dir": str(SERVER_DIR)}),
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PATH": "/usr/bin:/bin",
            "MODEL_ALLOWLIST": str(ensure_allowlist(env)),
            "OMP_NUM_THREADS": "1",
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _explain_fixture(name: str, tmp_path, rows=None) -> dict:
    entry = _manifest()[name]
    path = tmp_path / entry["file"]
    path.write_bytes((FIXTURES / entry["file"]).read_bytes())
    reference = entry["input_example"]
    return _probe(
        env_for_fixture(entry),
        {
            "kind": "fixture",
            "path": str(path),
            "format": entry["format"],
            "columns": entry["columns"],
            "reference": reference,
            "rows": rows if rows is not None else reference,
        },
    )


def _assert_sums(result: dict) -> None:
    for row in result["rows"]:
        total = row["base"] + sum(row["contributions"].values())
        scale = max(1.0, abs(row["own"]))
        assert abs(total - row["own"]) <= TOLERANCE * scale, row
        assert row["output"] == pytest.approx(row["own"], rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- fixtures


def test_forest_fixture_gets_exact_tree_path_contributions_to_the_class_probability(tmp_path):
    entry = _manifest()["iris"]
    rows = [*entry["input_example"], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    result = _explain_fixture("iris", tmp_path, rows)
    info = result["info"]
    assert (info["method"], info["exact"], info["output"]) == ("tree_path", True, "predict_proba")
    assert info["features"] == entry["columns"]
    _assert_sums(result)
    # The manifest's own numbers (computed by the training environment) for the example.
    for row, proba in zip(result["rows"], entry["expected_predict_proba"], strict=False):
        assert row["own"] == pytest.approx(max(proba))
    assert {r["class"] for r in result["rows"]} == {0, 1, 2}
    # A virginica-like row owes its class mostly to the petals.
    petals = result["rows"][3]["contributions"]
    assert petals["petal width (cm)"] + petals["petal length (cm)"] > 0.3


def test_linear_fixture_contributions_are_coefficients_times_distance_to_the_mean(tmp_path):
    entry = _manifest()["house-price"]
    rows = [[1500, 3, 2], [3200, 5, 4], [800, 1, 1]]
    result = _explain_fixture("house-price", tmp_path, rows)
    assert (result["info"]["method"], result["info"]["exact"]) == ("linear", True)
    assert result["info"]["features"] == ["x0", "x1", "x2"]  # positional: the schema's names
    _assert_sums(result)
    assert result["rows"][0]["own"] == pytest.approx(entry["expected_predict"][0])
    # Independent: moving one feature from the reference mean to x moves the price by it.
    for row, singles in zip(result["rows"], result["one_at_a_time"], strict=True):
        assert list(row["contributions"].values()) == pytest.approx(singles, rel=1e-9)
    base = result["rows"][0]["base"]
    assert base == pytest.approx(float(np.mean(entry["expected_predict"])))


def test_gradient_boosting_fixture_sums_to_the_regression_output(tmp_path):
    entry = _manifest()["diabetes"]
    result = _explain_fixture("diabetes", tmp_path)
    assert (result["info"]["method"], result["info"]["exact"]) == ("tree_path", True)
    _assert_sums(result)
    for row, expected in zip(result["rows"], entry["expected_predict"], strict=True):
        assert row["own"] == pytest.approx(expected)


def test_spam_pipeline_names_its_original_columns_with_exact_shapley_values(tmp_path):
    entry = _manifest()["spam"]
    rows = [*entry["input_example"], ["WIN MONEY NOW, free prize", "colleague3@company.org"]]
    result = _explain_fixture("spam", tmp_path, rows)
    info = result["info"]
    assert info["features"] == ["content", "sender"]
    assert (info["method"], info["exact"], info["output"]) == ("kernel_shap", True, "predict_proba")
    _assert_sums(result)
    for row, proba in zip(result["rows"], entry["expected_predict_proba"], strict=False):
        assert row["own"] == pytest.approx(max(proba))
    assert [r["class"] for r in result["rows"][:2]] == entry["expected_predict"]
    # Every coalition fits in the budget: the values ARE the Shapley values for the
    # reference, computed here by brute force from four predictions.
    for row, brute in zip(result["rows"], result["brute_force"], strict=True):
        assert list(row["contributions"].values()) == pytest.approx(brute, abs=1e-9)
    # 2 features x 2 reference rows: 2 coalitions x 2 rows per explained row (+ the
    # reference and the rows themselves).
    assert info["evaluations"] == len(rows) * 2 * 2 + 2 + len(rows)


def test_30_feature_svc_gets_a_bounded_estimate_that_still_sums_to_the_probability(tmp_path):
    entry = _manifest()["breast-cancer"]
    rows = [*entry["input_example"], list(np.mean(entry["input_example"], axis=0))]
    result = _explain_fixture("breast-cancer", tmp_path, rows)
    info = result["info"]
    assert (info["method"], info["exact"], info["output"]) == (
        "kernel_shap",
        False,
        "predict_proba",
    )
    assert len(info["features"]) == 30
    _assert_sums(result)
    # The cost: model evaluations (rows predicted) within the cap for each explained row.
    assert info["evaluations"] <= len(rows) * explain.MAX_EVALUATIONS + 2 + len(rows)
    assert info["evaluations"] >= len(rows) * 60  # and a real sample, not a token one
    for row, proba in zip(result["rows"], entry["expected_predict_proba"], strict=False):
        assert row["own"] == pytest.approx(max(proba))


# --------------------------------------------------------------------------- every family


@pytest.mark.parametrize("sklearn_version,numpy_major", [("1.3.2", 1), ("1.9.1", 2)])
def test_each_model_family_sums_to_its_own_output_in_old_and_new_scikit_learn(
    sklearn_version, numpy_major
):
    results = _probe(env_for(sklearn_version, numpy_major, "joblib"), {"kind": "trained"})
    methods = {
        "decision_tree_classifier": ("tree_path", True, "predict_proba"),
        "extra_trees_classifier": ("tree_path", True, "predict_proba"),
        "random_forest_regressor": ("tree_path", True, "predict"),
        "gradient_boosting_binary": ("tree_path", True, "decision_function"),
        "gradient_boosting_multiclass": ("tree_path", True, "decision_function"),
        "hist_gradient_boosting_regressor_nan": ("tree_path", True, "predict"),
        "hist_gradient_boosting_binary": ("tree_path", True, "decision_function"),
        "hist_gradient_boosting_multiclass": ("tree_path", True, "decision_function"),
        "logistic_binary": ("linear", True, "decision_function"),
        "logistic_multiclass": ("linear", True, "decision_function"),
        "ridge": ("linear", True, "predict"),
        "knn_classifier": ("kernel_shap", True, "predict_proba"),
        "svr_30_features": ("kernel_shap", False, "predict"),
    }
    assert set(results) == set(methods)
    for name, result in results.items():
        info = result["info"]
        assert (info["method"], info["exact"], info["output"]) == methods[name], name
        _assert_sums(result)
    assert results["svr_30_features"]["info"]["evaluations"] <= 5 * explain.MAX_EVALUATIONS + 25


# --------------------------------------------------------------------------- edge cases


def _additive(weights):
    class Additive:
        """f(x) = w . x: its Shapley values against any reference are w * (x - mean)."""

        def predict(self, x):
            return np.asarray(x, dtype=float) @ weights

    return Additive()


def test_estimate_recovers_an_additive_model_exactly_and_counts_its_evaluations():
    rng = np.random.default_rng(3)
    weights = rng.normal(size=30)
    reference = rng.normal(size=(8, 30)).tolist()
    rows = rng.normal(size=(3, 30)).tolist()
    explainer = explain.Explainer(
        _additive(weights),
        features=[f"f{i}" for i in range(30)],
        to_input=lambda v: v.astype(float),
        reference=reference,
    )
    explanations, info = explainer.explain(rows)
    assert (info["method"], info["exact"]) == ("kernel_shap", False)
    mean = np.mean(reference, axis=0)
    for row, x in zip(explanations, rows, strict=True):
        expected = weights * (np.asarray(x) - mean)
        assert list(row["contributions"].values()) == pytest.approx(expected, abs=1e-8)
    assert info["evaluations"] <= 3 * explain.MAX_EVALUATIONS + 8 + 3


def test_no_reference_refuses_the_estimate_with_a_clear_reason():
    explainer = explain.Explainer(
        _additive(np.ones(3)), features=["a", "b", "c"], to_input=lambda v: v.astype(float)
    )
    with pytest.raises(explain.ExplainError, match="no input example"):
        explainer.explain([[1, 2, 3]])


def test_too_many_rows_are_refused():
    explainer = explain.Explainer(
        _additive(np.ones(2)), features=["a", "b"], to_input=lambda v: v, reference=[[0, 0]]
    )
    with pytest.raises(explain.ExplainError, match=f"at most {explain.MAX_ROWS} rows"):
        explainer.explain([[1, 2]] * (explain.MAX_ROWS + 1))


# --------------------------------------------------------------------------- the proxy's side

SPAM_SCHEMA = {
    "n_features": 2,
    "columns": ["content", "sender"],
    "column_types": {"content": "string", "sender": "string"},
    "has_predict_proba": True,
}
ROWS = [["free money", "a@b.c"], ["minutes", "c@d.e"]]
UPSTREAM = {
    "predictions": [1, 0],
    "explanations": [{"base_value": 0.5, "contributions": {"content": 0.2, "sender": 0.1}}],
    "explainer": {"method": "kernel_shap", "exact": True},
}
JSON = {"content-type": "application/json"}


def _dialects():
    from deployments_app.predict import protocols

    records = [dict(zip(["content", "sender"], r, strict=True)) for r in ROWS]
    v2_inputs = [
        {"name": c, "shape": [2], "datatype": "BYTES", "data": [r[j] for r in ROWS]}
        for j, c in enumerate(["content", "sender"])
    ]
    return {
        "portal": (protocols.PORTAL, {"instances": records, "params": {"explain": True}}),
        "v1": (protocols.KSERVE_V1, {"instances": ROWS, "parameters": {"explain": True}}),
        "mlflow": (
            protocols.MLFLOW,
            {"dataframe_records": records, "params": {"explain": True}},
        ),
        "v2": (protocols.V2, {"inputs": v2_inputs, "parameters": {"explain": True}}),
    }


@pytest.mark.parametrize("dialect", ["portal", "v1", "mlflow", "v2"])
def test_every_dialect_reads_explain_and_forwards_it_and_says_the_answer(dialect):
    from types import SimpleNamespace

    from deployments_app.predict.pipeline import _upstream_body

    protocol, document = _dialects()[dialect]
    parsed = protocol.parse(json.dumps(document).encode(), JSON, SPAM_SCHEMA)
    assert parsed.explain is True and parsed.rows == ROWS
    assert json.loads(_upstream_body(parsed))["params"]["explain"] is True
    # A shadow copy (proba given) never explains: it would double the cost unseen.
    assert "explain" not in json.loads(_upstream_body(parsed, proba=True))["params"]
    call = SimpleNamespace(
        target=SimpleNamespace(name="d", model_name="m"),
        version=1,
        request=SimpleNamespace(request_id="r1"),
    )
    answer = json.loads(protocol.render(call, UPSTREAM, parsed).body)
    said = answer["parameters"] if dialect == "v2" else answer
    assert said["explanations"] == UPSTREAM["explanations"]
    assert said["explainer"] == UPSTREAM["explainer"]
    # Without explain: nothing added, nothing forwarded.
    document = {k: v for k, v in document.items() if k not in ("params", "parameters")}
    parsed = protocol.parse(json.dumps(document).encode(), JSON, SPAM_SCHEMA)
    assert parsed.explain is False
    assert "explain" not in json.loads(_upstream_body(parsed))["params"]


def test_explain_must_be_a_boolean_and_is_capped_in_rows():
    from deployments_app.predict.inputs import MAX_EXPLAIN_ROWS, InputError, parse_body

    with pytest.raises(InputError, match="'explain' must be true or false") as bad:
        parse_body({"instances": ROWS, "params": {"explain": "yes"}}, SPAM_SCHEMA)
    assert bad.value.status == 400
    assert MAX_EXPLAIN_ROWS == explain.MAX_ROWS  # the proxy refuses what the replica would
    many = {"instances": ROWS * MAX_EXPLAIN_ROWS, "params": {"explain": True}}
    with pytest.raises(InputError, match=f"at most {MAX_EXPLAIN_ROWS} rows") as big:
        parse_body(many, SPAM_SCHEMA)
    assert big.value.status == 413


def test_reference_rows_come_from_the_stored_example_and_stay_small():
    from deployments_app.predict.inputs import MAX_REFERENCE_BYTES, reference_rows

    stored = {"rows": ROWS, "columns": ["content", "sender"]}
    assert reference_rows(stored, SPAM_SCHEMA) == ROWS
    assert reference_rows(None, SPAM_SCHEMA) is None
    assert reference_rows({"rows": [[1, 2, 3]]}, SPAM_SCHEMA) is None  # does not fit
    big = {"rows": [["x" * 2000, "y"]] * 100}
    rows = reference_rows(big, SPAM_SCHEMA)
    assert rows and len(json.dumps(rows)) <= MAX_REFERENCE_BYTES


@pytest.mark.django_db
def test_the_try_it_form_offers_explain_to_those_who_may_predict(role_client):
    from deployments_app.models import Deployment
    from models_app.models import ModelVersion, RegisteredModel

    model = RegisteredModel.objects.create(name="m")
    version = ModelVersion.objects.create(
        model=model, number=1, status="ready", artifact_sha256="0" * 64, artifact_size=1
    )
    Deployment.objects.create(name="d", model=model, version=version, state="running")
    page = role_client("deployer").get("/deployments/d/").content.decode()
    assert 'id="try-explain"' in page and 'id="try-explanations"' in page
    assert 'id="try-explain"' not in role_client("viewer").get("/deployments/d/").content.decode()
    script = (REPO / "static" / "js" / "try_it.js").read_text()
    assert "explain: true" in script and "showExplanations" in script
