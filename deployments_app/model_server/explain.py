"""Per-row explanations for the model server: each feature's contribution to one output.

Runs inside the replica beside server.py, with the model's own scikit-learn: standard library
and numpy only (pandas when the server passes frames). Never import Django or the portal here.

For every explained row the contributions plus the base value equal the model's output:

    linear       linear and logistic models: coef * (x - reference mean), base = f(mean);
                 exact (regressors: predict; classifiers: the predicted class's
                 decision_function, i.e. its log-odds for logistic regression).
    tree_path    decision trees, random forests, extra trees, gradient boosting and
                 HistGradientBoosting: path-based contributions (Saabas) from the fitted
                 trees, exact (forests: the predicted class's probability; boosting: the raw
                 score, i.e. the predicted class's decision_function for classifiers).
    kernel_shap  anything else, pipelines included, on the ORIGINAL input columns: Shapley
                 values against the reference sample (the version's input example), with the
                 evaluations capped. With few features every coalition fits in the budget and
                 the values are the exact Shapley values for that reference ("exact": true);
                 otherwise a sampled KernelSHAP estimate ("exact": false). The efficiency
                 constraint makes contributions + base equal the output either way.

An exact method is checked against the model's own output on every call; when the check
fails (an estimator whose internals differ from what this module expects) the row falls back
to kernel_shap instead of answering wrong numbers.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

MAX_ROWS = 20  # rows explained per call
MAX_EVALUATIONS = 2048  # model evaluations (rows predicted) per explained row, kernel_shap
MAX_BACKGROUND = 32  # reference rows used as the kernel_shap background
SUM_TOLERANCE = 1e-6  # |base + sum(contributions) - output|, relative to max(1, |output|)

LINEAR = frozenset(
    {
        "LinearRegression",
        "Ridge",
        "RidgeCV",
        "Lasso",
        "LassoCV",
        "ElasticNet",
        "ElasticNetCV",
        "Lars",
        "LarsCV",
        "LassoLars",
        "LassoLarsCV",
        "LassoLarsIC",
        "OrthogonalMatchingPursuit",
        "BayesianRidge",
        "ARDRegression",
        "HuberRegressor",
        "TheilSenRegressor",
        "QuantileRegressor",
        "SGDRegressor",
        "LinearSVR",
        "PassiveAggressiveRegressor",
        "LogisticRegression",
        "LogisticRegressionCV",
        "SGDClassifier",
        "RidgeClassifier",
        "RidgeClassifierCV",
        "LinearSVC",
        "Perceptron",
        "PassiveAggressiveClassifier",
    }
)
SINGLE_TREES = frozenset(
    {"DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier", "ExtraTreeRegressor"}
)
FORESTS = frozenset(
    {
        "RandomForestClassifier",
        "RandomForestRegressor",
        "ExtraTreesClassifier",
        "ExtraTreesRegressor",
    }
)
BOOSTING = frozenset({"GradientBoostingClassifier", "GradientBoostingRegressor"})
HIST_BOOSTING = frozenset({"HistGradientBoostingClassifier", "HistGradientBoostingRegressor"})


class ExplainError(ValueError):
    """This model or input cannot be explained (answered 422 with the message)."""


def method_for(model) -> str:
    name = type(model).__name__
    if name in LINEAR and hasattr(model, "coef_"):
        return "linear"
    if name in SINGLE_TREES | FORESTS | BOOSTING | HIST_BOOSTING:
        return "tree_path"
    return "kernel_shap"


class Explainer:
    """Explains rows of one loaded model.

    `to_input(values)` turns a 2-D object array of raw feature values (the columns as sent)
    into what `model.predict` takes; `reference` is a list of raw rows (may be empty).
    """

    def __init__(self, model, *, features, to_input, reference=None, is_classifier=None):
        self.model = model
        self.features = [str(f) for f in features]
        self.to_input = to_input
        self.reference = [list(r) for r in (reference or []) if len(r) == len(self.features)]
        self.classes = getattr(model, "classes_", None)
        if is_classifier is None:
            is_classifier = self.classes is not None
        self.is_classifier = bool(is_classifier)
        self.has_proba = _has(model, "predict_proba")
        self.has_decision = _has(model, "decision_function")
        self.method = method_for(model)
        self.evaluations = 0  # rows predicted for kernel_shap (the cost)
        self._cache: dict = {}  # per fitted tree: what every call's paths need

    # -- the model's own outputs ---------------------------------------------

    def _predict(self, values):
        self.evaluations += len(values)
        return self.model.predict(self.to_input(values))

    def _scores(self, values, kind: str):
        """The output explained for rows `values`: (N,) or (N, K) floats."""
        self.evaluations += len(values)
        x = self.to_input(values)
        if kind == "predict_proba":
            return np.asarray(self.model.predict_proba(x), dtype=float)
        if kind == "decision_function":
            return np.asarray(self.model.decision_function(x), dtype=float)
        out = np.asarray(self.model.predict(x), dtype=float)
        if out.ndim > 1 and out.shape[1] != 1:
            raise ExplainError("explanations need a model with one output per row")
        return out.reshape(-1)

    def _output_kind(self, method: str) -> str:
        if not self.is_classifier:
            return "predict"
        if method == "linear":
            return "decision_function"
        if method == "tree_path":
            name = type(self.model).__name__
            return "predict_proba" if name in SINGLE_TREES | FORESTS else "decision_function"
        if self.has_proba:
            return "predict_proba"
        if self.has_decision:
            return "decision_function"
        raise ExplainError("this classifier has neither predict_proba nor decision_function")

    # -- entry point -----------------------------------------------------------

    def explain(self, rows: list) -> tuple[list[dict], dict]:
        """(one explanation per row, what was done) for raw rows (lists of feature values)."""
        if len(rows) > MAX_ROWS:
            raise ExplainError(f"explain takes at most {MAX_ROWS} rows per call; got {len(rows)}")
        values = _object_array(rows, len(self.features))
        self.evaluations = 0
        method = self.method
        results = None
        if method != "kernel_shap":
            try:
                results = self._exact(method, values)
            except ExplainError:
                raise
            except Exception:  # noqa: BLE001 - unexpected internals: the estimate below
                results = None
            if results is None:
                method = "kernel_shap"
        if results is None:
            results = self._kernel(values)
        kind = self._output_kind(method)
        explanations = []
        exact = True
        for base, contributions, output, k in results:
            exact = exact and k.get("exact", True)
            row = {
                "base_value": float(base),
                "contributions": dict(
                    zip(self.features, (float(c) for c in contributions), strict=True)
                ),
                "output": float(output),
            }
            if "class" in k:
                row["class"] = k["class"]
            explanations.append(row)
        info = {
            "method": method,
            "exact": exact,
            "output": kind,
            "features": self.features,
            "tolerance": SUM_TOLERANCE,
            "reference_rows": len(self.reference),
        }
        if method == "kernel_shap":
            info["evaluations"] = self.evaluations
            info["max_evaluations_per_row"] = MAX_EVALUATIONS
        return explanations, info

    def _label(self, k: int):
        return _plain(self.classes[k]) if self.classes is not None else k

    # -- exact methods -----------------------------------------------------------

    def _exact(self, method: str, values) -> list | None:
        numeric = values.astype(float)
        kind = self._output_kind(method)
        parts = (self._linear if method == "linear" else self._trees)(numeric, kind)
        if parts is None:
            return None
        base, contributions, picked, labels = parts
        # The check: the model's own output for these rows, unchanged by this module.
        outputs = self._scores(values, kind)
        if outputs.ndim == 2:
            if kind == "decision_function" and outputs.shape[1] == 1:
                outputs = outputs[:, 0]
            else:
                outputs = outputs[np.arange(len(values)), picked]
        if kind == "decision_function" and outputs.ndim == 1 and self.is_classifier:
            outputs = np.where(picked == 0, -outputs, outputs) if _binary(self.classes) else outputs
        total = base + contributions.sum(axis=1)
        scale = np.maximum(1.0, np.abs(outputs))
        if not np.all(np.abs(total - outputs) <= SUM_TOLERANCE * scale):
            return None
        return [(base[i], contributions[i], outputs[i], labels[i]) for i in range(len(values))]

    def _labels(self, picked) -> list[dict]:
        if not self.is_classifier:
            return [{} for _ in picked]
        return [{"class": self._label(int(k))} for k in picked]

    def _linear(self, x, kind: str):
        coef = np.asarray(self.model.coef_, dtype=float)
        intercept = np.atleast_1d(np.asarray(self.model.intercept_, dtype=float))
        if self.reference:
            mean = _object_array(self.reference, len(self.features)).astype(float).mean(axis=0)
        else:
            mean = np.zeros(x.shape[1])
        if coef.ndim == 1:
            coef = coef[None, :]
        if coef.shape[1] != x.shape[1]:
            return None
        scores = x @ coef.T + intercept  # (N, K)
        if not self.is_classifier:
            if coef.shape[0] != 1:
                raise ExplainError("explanations need a model with one output per row")
            picked = np.zeros(len(x), dtype=int)
            sign = np.ones(len(x))
        elif coef.shape[0] == 1:  # binary: one score for the second class
            picked = (scores[:, 0] > 0).astype(int)
            sign = np.where(picked == 1, 1.0, -1.0)
        else:
            picked = np.argmax(scores, axis=1)
            sign = np.ones(len(x))
        rows_coef = coef[picked if coef.shape[0] > 1 else np.zeros(len(x), dtype=int)]
        rows_icpt = intercept[picked if coef.shape[0] > 1 else np.zeros(len(x), dtype=int)]
        contributions = sign[:, None] * rows_coef * (x - mean)
        base = sign * (rows_coef @ mean + rows_icpt)
        return base, contributions, picked, self._labels(picked)

    def _trees(self, x, kind: str):
        name = type(self.model).__name__
        model = self.model
        n_features = x.shape[1]
        if name in SINGLE_TREES | FORESTS:
            trees = [model] if name in SINGLE_TREES else list(model.estimators_)
            proba = kind == "predict_proba"
            parts = [_sklearn_tree_parts(t.tree_, x, n_features, proba, self._cache) for t in trees]
            base = np.mean([p[0] for p in parts], axis=0)  # (K,)
            contrib = np.mean([p[1] for p in parts], axis=0)  # (N, F, K)
            if proba:
                picked = np.argmax(base[None, :] + contrib.sum(axis=1), axis=1)
            else:
                picked = np.zeros(len(x), dtype=int)
            idx = np.arange(len(x))
            return (
                base[picked],
                contrib[idx, :, picked],
                picked,
                self._labels(picked) if proba else [{} for _ in picked],
            )
        if name in BOOSTING:
            lr = float(model.learning_rate)
            stages = np.asarray(model.estimators_)  # (n_stages, K)
            k_out = stages.shape[1]
            base = np.zeros(k_out)
            contrib = np.zeros((len(x), n_features, k_out))
            for k in range(k_out):
                for tree in stages[:, k]:
                    b, c = _sklearn_tree_parts(tree.tree_, x, n_features, False, self._cache)
                    base[k] += lr * b[0]
                    contrib[:, :, k] += lr * c[:, :, 0]
        elif name in HIST_BOOSTING:
            if getattr(model, "_preprocessor", None) is not None:
                return None
            predictors = model._predictors
            k_out = len(predictors[0])
            base = np.zeros(k_out)
            contrib = np.zeros((len(x), n_features, k_out))
            for iteration in predictors:
                for k, predictor in enumerate(iteration):
                    parts = _hist_tree_parts(predictor.nodes, x, n_features, self._cache)
                    if parts is None:
                        return None
                    base[k] += parts[0]
                    contrib[:, :, k] += parts[1]
        else:
            return None
        # The constant the trees start from (the init estimator / baseline): the model's raw
        # output minus the trees' part, read from the model itself; the check in _exact
        # proves it is one constant for every row.
        raw = self._raw_scores(x, k_out)
        tree_part = base[None, :] + contrib.sum(axis=1)
        offset = (raw - tree_part).mean(axis=0)
        base = base + offset
        if self.is_classifier and k_out == 1:
            picked = (raw[:, 0] > 0).astype(int)
            sign = np.where(picked == 1, 1.0, -1.0)
            return (
                sign * base[0],
                sign[:, None] * contrib[:, :, 0],
                picked,
                self._labels(picked),
            )
        if self.is_classifier:
            picked = np.argmax(raw, axis=1)
            idx = np.arange(len(x))
            return base[picked], contrib[idx, :, picked], picked, self._labels(picked)
        return (
            np.full(len(x), base[0]),
            contrib[:, :, 0],
            np.zeros(len(x), dtype=int),
            [{} for _ in range(len(x))],
        )

    def _raw_scores(self, x, k_out: int):
        values = _object_array(x.tolist(), x.shape[1])
        kind = "decision_function" if self.is_classifier else "predict"
        raw = self._scores(values, kind)
        self.evaluations -= len(values)  # not an evaluation of the estimate
        return raw.reshape(len(x), k_out)

    # -- the model-agnostic estimate ----------------------------------------------

    def _kernel(self, values) -> list:
        """Shapley values of each row against the reference (exact when every coalition
        fits in the budget, else a paired KernelSHAP sample), the base value being the mean
        output over the reference rows used, and sum(phi) == output - base. One predict call
        for the whole request: the reference, the rows and every row's synthetic rows."""
        if not self.reference:
            raise ExplainError(
                "this version has no input example to compare with: explanations of this "
                "model need one (upload the version with an input example)"
            )
        kind = self._output_kind("kernel_shap")
        m, n = len(self.features), len(values)
        background = _object_array(self.reference, m)[:MAX_BACKGROUND]
        masks, weights, exact = self._coalitions(m, len(background))
        b = max(1, min(len(background), MAX_EVALUATIONS // max(1, len(masks))))
        background = background[:b]
        blocks = [background, values]
        for i in range(n):
            synthetic = np.where(masks[:, None, :], values[i][None, None, :], background[None])
            blocks.append(synthetic.reshape(-1, m))
        scores = self._scores(np.concatenate(blocks), kind)
        bg_scores, x_scores = scores[:b], scores[b : b + n]
        per_row = scores[b + n :].reshape(n, len(masks), b, *scores.shape[1:])
        results = []
        for i in range(n):
            label: dict = {}
            if x_scores.ndim == 2:  # probabilities or multiclass scores: the predicted class
                k = int(np.argmax(x_scores[i]))
                fx, bg, v = x_scores[i, k], bg_scores[:, k], per_row[i][..., k]
                label["class"] = self._label(k)
            elif self.is_classifier and _binary(self.classes):  # one score for class 1
                k = int(x_scores[i] > 0)
                sign = 1.0 if k else -1.0
                fx, bg, v = sign * x_scores[i], sign * bg_scores, sign * per_row[i]
                label["class"] = self._label(k)
            else:
                fx, bg, v = x_scores[i], bg_scores, per_row[i]
            base = float(np.mean(bg))
            phi = _solve(masks, weights, v.mean(axis=1), base, float(fx) - base)
            label["exact"] = exact
            results.append((base, phi, fx, label))
        return results

    def _coalitions(self, m: int, b: int):
        """(masks, weights, exact): every coalition when they fit in MAX_EVALUATIONS with `b`
        reference rows, else a sample of MAX_EVALUATIONS // b (at least 2 m: fewer
        reference rows are used then)."""
        if m == 1:
            return np.zeros((0, 1), dtype=bool), np.zeros(0), True
        budget = MAX_EVALUATIONS // b
        if budget < 2 * m:
            budget = MAX_EVALUATIONS // max(1, MAX_EVALUATIONS // (2 * m))
        if 2**m - 2 <= budget:
            masks = np.array(
                [c for c in itertools.product((0, 1), repeat=m) if 0 < sum(c) < m], dtype=bool
            )
            sizes = masks.sum(axis=1)
            weights = (m - 1) / (
                np.array([math.comb(m, int(s)) for s in sizes]) * sizes * (m - sizes)
            )
            return masks, weights, True
        masks, weights = _sample_masks(m, budget)
        return masks, weights, False


def _solve(masks, weights, v, base: float, gap: float):
    """Weighted least squares of the coalition values on the masks, with the efficiency
    constraint sum(phi) == gap enforced by eliminating the last feature."""
    m = masks.shape[1]
    if m == 1:
        return np.array([gap])
    z = masks.astype(float)
    y = v - base - z[:, -1] * gap
    a = z[:, :-1] - z[:, -1:]
    sw = np.sqrt(weights)
    solution, *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
    return np.append(solution, gap - solution.sum())


def _sample_masks(m: int, budget: int):
    """Paired coalitions with sizes drawn from the Shapley kernel (uniform weights then)."""
    rng = np.random.default_rng(0)  # the same answer for the same row, call after call
    sizes = np.arange(1, m)
    p = (m - 1) / (sizes * (m - sizes))
    p = p / p.sum()
    pairs = max(1, budget // 2)
    drawn = rng.choice(sizes, size=pairs, p=p)
    masks = np.zeros((2 * pairs, m), dtype=bool)
    for j, s in enumerate(drawn):
        chosen = rng.choice(m, size=int(s), replace=False)
        masks[2 * j, chosen] = True
        masks[2 * j + 1] = ~masks[2 * j]
    return masks, np.ones(len(masks))


def _sklearn_tree_parts(tree, x, n_features: int, proba: bool, cache: dict):
    """(root value (K,), contributions (N, F, K)) of one fitted sklearn tree."""
    key = (id(tree), proba)
    if key not in cache:
        cache[key] = _sklearn_tree_deltas(tree, proba)
    root, feature_of, delta = cache[key]
    path = tree.decision_path(np.ascontiguousarray(x, dtype=np.float32)).tocoo()  # (N, nodes)
    keep = feature_of[path.col] >= 0  # the root has no parent split
    contrib = np.zeros((len(x), n_features, delta.shape[1]))
    np.add.at(contrib, (path.row[keep], feature_of[path.col[keep]]), delta[path.col[keep]])
    return root, contrib


def _sklearn_tree_deltas(tree, proba: bool):
    """Per node: the feature of the split that leads to it and the change of the expected
    output it brings (what a path through the node adds)."""
    if np.asarray(tree.value).shape[1] != 1:
        raise ExplainError("explanations need a model with one output per row")
    left, right = tree.children_left, tree.children_right
    value = np.asarray(tree.value, dtype=float)[:, 0, :]  # (nodes, K)
    weight = np.asarray(tree.weighted_n_node_samples, dtype=float)
    leaf = left < 0
    if proba:
        sums = value.sum(axis=1, keepdims=True)
        value = np.divide(value, sums, out=np.zeros_like(value), where=sums > 0)
    expected = _expected(value, leaf, left, right, weight)
    parent = np.full(len(left), -1)
    inner = np.flatnonzero(~leaf)
    parent[left[inner]] = inner
    parent[right[inner]] = inner
    feature_of = np.where(parent >= 0, tree.feature[np.maximum(parent, 0)], -1)
    delta = np.where((parent >= 0)[:, None], expected - expected[np.maximum(parent, 0)], 0.0)
    return expected[0], feature_of, delta


def _expected(value, leaf, left, right, weight):
    """Each node's expected output: its leaves' values weighted by training samples."""
    expected = value.copy()
    for node in range(len(left) - 1, -1, -1):  # children have higher ids than parents
        if not leaf[node]:
            wl, wr = weight[left[node]], weight[right[node]]
            total = wl + wr
            if total > 0:
                expected[node] = (wl * expected[left[node]] + wr * expected[right[node]]) / total
    return expected


def _hist_tree_parts(nodes, x, n_features: int, cache: dict):
    """(root value, contributions (N, F)) of one HistGradientBoosting TreePredictor; None for
    categorical splits (left to the estimate)."""
    key = id(nodes)
    if key not in cache:
        cache[key] = _hist_tree_arrays(nodes)
    if cache[key] is None:
        return None
    is_leaf, left, right, expected, feature, threshold, missing_left = cache[key]
    contrib = np.zeros((len(x), n_features))
    current = np.zeros(len(x), dtype=int)
    active = ~is_leaf[current]
    rows = np.arange(len(x))
    while active.any():
        r = rows[active]
        node = current[r]
        f = feature[node]
        val = x[r, f]
        go_left = np.where(np.isnan(val), missing_left[node], val <= threshold[node])
        child = np.where(go_left, left[node], right[node])
        contrib[r, f] += expected[child, 0] - expected[node, 0]
        current[r] = child
        active = ~is_leaf[current]
    return expected[0, 0], contrib


def _hist_tree_arrays(nodes):
    if np.any(nodes["is_categorical"].astype(bool) & ~nodes["is_leaf"].astype(bool)):
        return None
    is_leaf = nodes["is_leaf"].astype(bool)
    left = np.where(is_leaf, -1, nodes["left"].astype(int))
    right = np.where(is_leaf, -1, nodes["right"].astype(int))
    weight = nodes["count"].astype(float)
    expected = nodes["value"].astype(float)[:, None].copy()
    for node in reversed(_topological(left, right)):  # children before parents
        if not is_leaf[node]:
            wl, wr = weight[left[node]], weight[right[node]]
            if wl + wr > 0:
                expected[node] = (wl * expected[left[node]] + wr * expected[right[node]]) / (
                    wl + wr
                )
    return (
        is_leaf,
        left,
        right,
        expected,
        nodes["feature_idx"].astype(int),
        nodes["num_threshold"].astype(float),
        nodes["missing_go_to_left"].astype(bool),
    )


def _topological(left, right) -> list[int]:
    order, stack = [], [0]
    while stack:
        node = stack.pop()
        order.append(node)
        if left[node] >= 0:
            stack.extend((left[node], right[node]))
    return order


def _binary(classes) -> bool:
    return classes is not None and len(classes) == 2


def _has(model, attr: str) -> bool:
    try:
        return hasattr(model, attr)
    except Exception:  # noqa: BLE001 - some meta-estimators raise other errors
        return False


def _object_array(rows, width: int):
    arr = np.empty((len(rows), width), dtype=object)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ExplainError(f"row {i} has {len(row)} values; expected {width}")
        arr[i, :] = list(row)
    return arr


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
