"""Run INSIDE a model's own environment by tests/deployments_app/test_explain.py.

Reads one job (JSON) on stdin, explains rows with the model server's explain.py through
server.ModelState (as a replica does), and writes what the tests check as JSON on stdout:
for every row the base value, the contributions, the explained output and the model's own
output computed here independently of explain.py. Standard library, numpy, scikit-learn.

    {"kind": "fixture", "server_dir", "path", "format", "columns", "reference", "rows"}
    {"kind": "trained", "server_dir"}   (estimators fitted here on scikit-learn's datasets)
"""

import json
import sys
import time

import numpy as np


def own_output(model, x, info, row):
    """The number explained, straight from the model (not from explain.py)."""
    kind = info["output"]
    if kind == "predict":
        return float(np.asarray(model.predict(x), dtype=float).reshape(-1)[0])
    classes = list(model.classes_)
    k = classes.index(row["class"])
    if kind == "predict_proba":
        return float(model.predict_proba(x)[0, k])
    scores = np.asarray(model.decision_function(x), dtype=float)
    if scores.ndim == 1:
        return float(scores[0] if k == 1 else -scores[0])
    return float(scores[0, k])


def run(state, rows):
    started = time.perf_counter()
    state.predict(state.build_input(rows), state.has_proba)
    predict_ms = (time.perf_counter() - started) * 1000
    state.explain(rows)  # the first call imports explain.py; time the second
    started = time.perf_counter()
    explanations, info = state.explain(rows)
    explain_ms = (time.perf_counter() - started) * 1000
    out = []
    for raw, row in zip(rows, explanations, strict=True):
        x = state.build_input([raw])
        out.append(
            {
                "base": row["base_value"],
                "contributions": row["contributions"],
                "output": row["output"],
                "own": own_output(state.model, x, info, row),
                "class": row.get("class"),
            }
        )
    return {"info": info, "rows": out, "predict_ms": predict_ms, "explain_ms": explain_ms}


def shapley_two(state, x, reference, info, row):
    """Brute-force Shapley values of a 2-feature model against the reference rows."""
    classes = list(state.model.classes_)
    k = classes.index(row["class"])

    def v(mask):
        values = [[x[j] if mask[j] else ref[j] for j in range(2)] for ref in reference]
        return float(state.model.predict_proba(state.build_input(values))[:, k].mean())

    none, both = v((0, 0)), v((1, 1))
    first, second = v((1, 0)), v((0, 1))
    return [0.5 * ((first - none) + (both - second)), 0.5 * ((second - none) + (both - first))]


def fixture_job(job, server):
    model = server.load_model(job["path"], job["format"])
    state = server.ModelState(model, "probe", 1, job["columns"])
    state.reference = job["reference"]
    result = run(state, job["rows"])
    if len(result["info"]["features"]) == 2 and result["info"]["method"] == "kernel_shap":
        result["brute_force"] = [
            shapley_two(state, raw, job["reference"], result["info"], row)
            for raw, row in zip(job["rows"], result["rows"], strict=True)
        ]
    if result["info"]["method"] == "linear":  # f(mean with x_j) - f(mean), one by one
        mean = np.asarray(job["reference"], dtype=float).mean(axis=0)
        singles = []
        for raw in job["rows"]:
            alone = []
            for j in range(len(mean)):
                z = mean.copy()
                z[j] = raw[j]
                alone.append(float(model.predict([z])[0] - model.predict([mean])[0]))
            singles.append(alone)
        result["one_at_a_time"] = singles
    return result


def trained_job(job, server):
    from sklearn import datasets, ensemble, linear_model, neighbors, svm, tree

    iris = datasets.load_iris(return_X_y=True)
    diabetes = datasets.load_diabetes(return_X_y=True)
    cancer = datasets.load_breast_cancer(return_X_y=True)
    x_nan = diabetes[0].copy()
    x_nan[::7, 2] = np.nan
    cases = {
        "decision_tree_classifier": (tree.DecisionTreeClassifier(max_depth=4), iris),
        "extra_trees_classifier": (ensemble.ExtraTreesClassifier(n_estimators=20), iris),
        "random_forest_regressor": (
            ensemble.RandomForestRegressor(n_estimators=20, max_depth=6),
            diabetes,
        ),
        "gradient_boosting_binary": (ensemble.GradientBoostingClassifier(n_estimators=20), cancer),
        "gradient_boosting_multiclass": (
            ensemble.GradientBoostingClassifier(n_estimators=20),
            iris,
        ),
        "hist_gradient_boosting_regressor_nan": (
            ensemble.HistGradientBoostingRegressor(max_iter=30),
            (x_nan, diabetes[1]),
        ),
        "hist_gradient_boosting_binary": (
            ensemble.HistGradientBoostingClassifier(max_iter=30),
            cancer,
        ),
        "hist_gradient_boosting_multiclass": (
            ensemble.HistGradientBoostingClassifier(max_iter=30),
            iris,
        ),
        "logistic_binary": (linear_model.LogisticRegression(max_iter=5000), cancer),
        "logistic_multiclass": (linear_model.LogisticRegression(max_iter=1000), iris),
        "ridge": (linear_model.Ridge(), diabetes),
        "knn_classifier": (neighbors.KNeighborsClassifier(), iris),
        "svr_30_features": (svm.SVR(), (cancer[0], cancer[0][:, 0])),
    }
    results = {}
    rng = np.random.default_rng(1)
    for name, (model, (x, y)) in cases.items():
        model.fit(x, y)
        state = server.ModelState(model, name, 1, None)
        picks = rng.choice(len(x), size=25, replace=False)
        state.reference = x[picks[:20]].tolist()
        results[name] = run(state, x[picks[20:]].tolist())
    return results


def main():
    job = json.load(sys.stdin)
    sys.path.insert(0, job["server_dir"])
    import server

    result = fixture_job(job, server) if job["kind"] == "fixture" else trained_job(job, server)
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
