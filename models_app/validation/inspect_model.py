"""Load one uploaded model and describe it. Runs INSIDE the sandbox.

    python inspect_model.py MODEL_PATH FORMAT OPTIONS_JSON

FORMAT is pickle, joblib or skops.  OPTIONS_JSON is a file holding
``{"example": [[...], ...] | null, "columns": [...] | null, "max_rows": int,
"allowlist": path | null}``.  The model is loaded by ``safe_load.py`` (the restricted
loader, copied beside this script with ``policy.py``) under the environment's allowlist.

Standalone on purpose: only the standard library and the packages of the
environment the model is loaded in (scikit-learn, numpy, joblib, skops, pandas).
Nothing of the portal is importable here.

Exactly one JSON object is written to the ORIGINAL standard output::

    {"ok": bool, "error": str|None, "warnings": [...], "estimator": {...},
     "schema": {"n_features", "columns", "column_types"}, "smoke": {...},
     "versions": {...}, "timings_ms": {...}, "importance": {...} | absent}

Everything else (prints of the model, C libraries writing to fd 1) goes to
standard error, which the sandbox keeps, bounded, for the report.
"""

import json
import math
import os
import platform
import sys
import time
import traceback
import warnings

# ---- keep fd 1 for the report alone: from here on, fd 1 is a copy of fd 2.
_REPORT_FD = os.dup(1)
os.dup2(2, 1)
sys.stdout = sys.stderr

MAX_WARNINGS = 50
MAX_TEXT = 2000
DEFAULT_MAX_ROWS = 100
TEXT_VECTORIZERS = ("TfidfVectorizer", "CountVectorizer", "HashingVectorizer")


def _clip(text, limit=MAX_TEXT):
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "...[truncated]"


def _jsonable(value):
    """numpy scalars/arrays and non-finite floats -> plain JSON values."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return _clip(repr(value), 200)


def _qualname(obj):
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


class Report:
    def __init__(self):
        self.data = {
            "ok": False,
            "error": None,
            "warnings": [],
            "estimator": None,
            "schema": {"n_features": None, "columns": None, "column_types": None},
            "smoke": None,
            "versions": {},
            "timings_ms": {},
        }

    def warn(self, phase, category, message):
        if len(self.data["warnings"]) < MAX_WARNINGS:
            self.data["warnings"].append(
                {"phase": phase, "category": category, "message": _clip(message)}
            )

    def add_caught(self, phase, caught):
        for w in caught:
            self.warn(phase, w.category.__name__, w.message)

    def emit(self):
        text = json.dumps(_jsonable(self.data), allow_nan=False)
        with os.fdopen(_REPORT_FD, "w") as out:
            out.write(text)
            out.write("\n")
            out.flush()


def _error(exc):
    if isinstance(exc, MemoryError):
        return "MemoryError: the memory limit was exceeded"
    return _clip(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- load


def load_model(path, fmt, options, report):
    """Load through the restricted loader copied beside this script (never plain pickle).

    ``options["allowlist"]`` names the environment's allowlist file, written by the portal
    with this environment's Python; without it the loader enumerates it here.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)  # python -I does not put the script's folder on the path
    import safe_load

    allowlist = safe_load.load_allowlist(options.get("allowlist"))
    return safe_load.load_model(path, fmt, allowlist=allowlist)


# --------------------------------------------------------------------------- introspection


def _task(est):
    from sklearn import base

    try:
        if base.is_classifier(est):
            return "classifier"
        if base.is_regressor(est):
            return "regressor"
        is_clusterer = getattr(base, "is_clusterer", None)
        if (is_clusterer and is_clusterer(est)) or getattr(
            est, "_estimator_type", None
        ) == "clusterer":
            return "clusterer"
        is_outlier = getattr(base, "is_outlier_detector", None)
        if is_outlier and is_outlier(est):
            return "outlier_detector"
    except Exception:  # noqa: S110 - odd objects: fall through to the heuristics below
        pass
    if hasattr(est, "transform") and not hasattr(est, "predict"):
        return "transformer"
    return "unknown"


def _final_step(est):
    steps = getattr(est, "steps", None)
    if isinstance(steps, list) and steps:
        return _final_step(steps[-1][1])
    return est


def _first_step(est):
    steps = getattr(est, "steps", None)
    if isinstance(steps, list) and steps:
        return _first_step(steps[0][1])
    return est


def _is_text_vectorizer(trans):
    return type(_first_step(trans)).__name__ in TEXT_VECTORIZERS


def _find_column_transformers(est, depth=0):
    if depth > 6:
        return []
    found = []
    if type(est).__name__ == "ColumnTransformer" and hasattr(est, "transformers"):
        found.append(est)
    for _, sub in getattr(est, "steps", None) or []:
        found.extend(_find_column_transformers(sub, depth + 1))
    return found


def _select(cols, names):
    """Column selector of a ColumnTransformer -> list of column names."""
    import numpy as np

    if isinstance(cols, str):
        return [cols]
    if isinstance(cols, int):
        return [names[cols]] if names is not None else [str(cols)]
    if isinstance(cols, slice):
        return list(names[cols]) if names is not None else []
    if callable(cols):
        return []
    arr = np.asarray(cols)
    if arr.dtype == bool and names is not None:
        return [n for n, keep in zip(names, arr, strict=False) if keep]
    out = []
    for c in arr.tolist():
        if isinstance(c, int) and names is not None and 0 <= c < len(names):
            out.append(names[c])
        else:
            out.append(str(c))
    return out


def _type_of(trans):
    if trans == "drop":
        return "unused"
    if isinstance(trans, str):  # passthrough
        return "number"
    if _is_text_vectorizer(trans):
        return "string"
    first = _first_step(trans)
    cats = getattr(first, "categories_", None)
    if cats is not None:
        try:
            if any(getattr(c, "dtype", None) is not None and c.dtype.kind in "OUS" for c in cats):
                return "string"
        except Exception:  # noqa: S110 - best effort only
            pass
    return "number"


def column_types(est, names):
    """Which input columns are text and which numeric, where the model says so."""
    cts = _find_column_transformers(est)
    if not cts:
        if names is not None:
            return dict.fromkeys(names, "number")
        return None
    ct = cts[0]
    types = {}
    transformers = getattr(ct, "transformers_", None) or ct.transformers
    for item in transformers:
        _name, trans, cols = item[0], item[1], item[2]
        if _name == "remainder":
            continue
        for col in _select(cols, names):
            kind = _type_of(trans)
            if kind == "unused" and col in types:
                continue
            types[col] = kind
    if names is not None:
        remainder = getattr(ct, "remainder", "drop")
        rest = "unused" if remainder == "drop" else _type_of(remainder)
        for n in names:
            types.setdefault(n, rest)
    return types


def describe(est, report):
    final = _final_step(est)
    info = {
        "class": _qualname(est),
        "final_class": _qualname(final),
        "steps": None,
        "task": _task(est),
        "classes": None,
        "has_predict_proba": False,
    }
    steps = getattr(est, "steps", None)
    if isinstance(steps, list):
        info["steps"] = [{"name": str(n), "class": _qualname(s)} for n, s in steps]
    try:
        info["has_predict_proba"] = bool(hasattr(est, "predict_proba"))
    except Exception:
        info["has_predict_proba"] = False
    classes = getattr(est, "classes_", None)
    if classes is None:
        classes = getattr(final, "classes_", None)
    if classes is not None:
        info["classes"] = _jsonable(classes)

    n_features = getattr(est, "n_features_in_", None)
    names = getattr(est, "feature_names_in_", None)
    names = [str(n) for n in names] if names is not None else None
    try:
        n_features = int(n_features) if n_features is not None else None
    except (TypeError, ValueError):
        n_features = None
    if n_features is None and names is not None:
        n_features = len(names)
    schema = {"n_features": n_features, "columns": names, "column_types": None}
    try:
        schema["column_types"] = column_types(est, names)
    except Exception as exc:
        report.warn("inspect", type(exc).__name__, f"column types not found: {exc}")
    if names is None and _is_text_vectorizer(est):
        schema["text_input"] = True  # 1-D input: one document per row
    return info, schema


# --------------------------------------------------------------------------- smoke test


def _synthetic_row(schema):
    names = schema["columns"]
    types = schema["column_types"] or {}
    if names is not None:
        return [["example" if types.get(n) == "string" else 0.0 for n in names]]
    if schema.get("text_input"):
        return ["example"]
    if schema["n_features"]:
        return [[0.0] * schema["n_features"]]
    return None


def build_input(rows, schema, columns):
    import numpy as np

    names = schema["columns"]
    if rows and isinstance(rows[0], dict):
        columns = list(rows[0].keys()) if columns is None else columns
        rows = [[r.get(c) for c in columns] for r in rows]
    if schema.get("text_input") and rows and isinstance(rows[0], str):
        return list(rows)
    if names is not None:
        try:
            import pandas as pd
        except ImportError:
            pd = None
        if pd is not None:
            given = list(columns) if columns else names
            df = pd.DataFrame(rows, columns=given)
            missing = [n for n in names if n not in df.columns]
            if missing:
                raise ValueError(f"example lacks the model's columns: {missing}")
            return df[names]
    arr = np.asarray(rows, dtype=object)
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        return arr


def _check_output(name, values, n_rows):
    import numpy as np

    arr = np.asarray(values)
    if arr.ndim == 0 or arr.shape[0] != n_rows:
        raise ValueError(f"{name} returned shape {arr.shape} for {n_rows} rows")
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} returned non-finite values")
    return arr


def smoke_test(est, info, schema, options, report):
    rows = options.get("example")
    synthetic = not rows
    if synthetic:
        rows = _synthetic_row(schema)
        if rows is None:
            raise ValueError(
                "no input example given and the model does not tell its number of features"
            )
    max_rows = int(options.get("max_rows") or DEFAULT_MAX_ROWS)
    rows = list(rows)[:max_rows]
    X = build_input(rows, schema, options.get("columns"))
    smoke = {"input": rows, "synthetic": synthetic, "predictions": None, "probabilities": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        try:
            pred = _check_output("predict", est.predict(X), len(rows))
            smoke["predictions"] = _jsonable(pred)
            if info["has_predict_proba"]:
                proba = _check_output("predict_proba", est.predict_proba(X), len(rows))
                smoke["probabilities"] = _jsonable(proba)
        finally:
            report.data["timings_ms"]["predict"] = round((time.perf_counter() - t0) * 1000, 2)
            report.add_caught("predict", caught)
    return smoke


# --------------------------------------------------------------------------- importance

IMPORTANCE_MAX_ROWS = 200
IMPORTANCE_MAX_EVALUATIONS = 300  # features x repeats: predict calls, each on <= 200 rows


def _output(est, X, proba):
    import numpy as np

    out = est.predict_proba(X) if proba else est.predict(X)
    return np.asarray(out)


def importance(est, info, schema, rows, columns, report):
    """Global importance: scikit-learn's permutation_importance on the example rows, scored
    by how far the model's own output moves (mean absolute change of predict_proba, or of
    predict; for labels the share of changed predictions), so no true labels are needed.
    Bounded: at most IMPORTANCE_MAX_ROWS rows and IMPORTANCE_MAX_EVALUATIONS predict calls.
    Returns the report entry, or one saying why it was skipped."""
    import numpy as np
    from sklearn.inspection import permutation_importance

    rows = list(rows)[:IMPORTANCE_MAX_ROWS]
    if len(rows) < 2:
        return {"skipped": "needs an input example of at least 2 rows"}
    X = build_input(rows, schema, columns)
    if isinstance(X, list):  # raw text: a single column, nothing to rank
        return {"skipped": "a single text input: nothing to compare"}
    n_features = X.shape[1]
    repeats = min(5, IMPORTANCE_MAX_EVALUATIONS // max(1, n_features))
    if repeats < 1:
        return {"skipped": f"{n_features} features: more than the importance budget"}
    proba = bool(info.get("has_predict_proba"))
    y = _output(est, X, proba)
    labels = y.dtype.kind not in "fiub"

    def moved(model, data, expected):
        out = _output(model, data, proba)
        if labels:
            return -float(np.mean(out != expected))
        return -float(np.mean(np.abs(out.astype(float) - expected.astype(float))))

    t0 = time.perf_counter()
    result = permutation_importance(
        est, X, y, scoring=moved, n_repeats=repeats, random_state=0, n_jobs=1
    )
    ms = round((time.perf_counter() - t0) * 1000, 2)
    report.data["timings_ms"]["importance"] = ms
    names = schema.get("columns") or [f"x{i}" for i in range(n_features)]
    features = [
        {"name": str(n), "importance": float(m), "std": float(s)}
        for n, m, s in zip(names, result.importances_mean, result.importances_std, strict=True)
    ]
    features.sort(key=lambda f: -abs(f["importance"]))
    return {
        "method": "permutation",
        "output": "predict_proba" if proba else "predict",
        "score": "share of changed predictions" if labels else "mean absolute change",
        "rows": len(rows),
        "repeats": repeats,
        "features": features,
        "ms": ms,
    }


# --------------------------------------------------------------------------- main


def main(argv):
    report = Report()
    t_start = time.perf_counter()
    if len(argv) != 4:
        report.data["error"] = "usage: inspect_model.py MODEL_PATH FORMAT OPTIONS_JSON"
        report.emit()
        return 2
    path, fmt, options_path = argv[1], argv[2], argv[3]
    phase = "options"
    try:
        with open(options_path) as fh:
            options = json.load(fh)
        report.data["versions"] = {
            "python": platform.python_version(),
            "scikit-learn": _version("scikit-learn"),
            "numpy": _version("numpy"),
            "scipy": _version("scipy"),
            "joblib": _version("joblib"),
            "pandas": _version("pandas"),
            "skops": _version("skops"),
            "threadpoolctl": _version("threadpoolctl"),
        }
        phase = "import"
        t0 = time.perf_counter()
        import numpy  # noqa: F401
        import sklearn  # noqa: F401

        report.data["timings_ms"]["import"] = round((time.perf_counter() - t0) * 1000, 2)

        phase = "load"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            try:
                est = load_model(path, fmt, options, report)
            finally:
                report.data["timings_ms"]["load"] = round((time.perf_counter() - t0) * 1000, 2)
                report.add_caught("load", caught)

        phase = "inspect"
        if not callable(getattr(est, "predict", None)):
            raise TypeError(
                f"not an estimator: the file holds a {_qualname(est)} object, "
                "which has no predict() method"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info, schema = describe(est, report)
            report.add_caught("inspect", caught)
        report.data["estimator"] = info
        report.data["schema"] = schema

        phase = "predict"
        report.data["smoke"] = smoke_test(est, info, schema, options, report)
        report.data["ok"] = True

        phase = "importance"  # informative only: a failure here rejects nothing
        if options.get("example"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    report.data["importance"] = importance(
                        est, info, schema, options["example"], options.get("columns"), report
                    )
                except Exception as exc:  # noqa: BLE001 - reported, not fatal
                    report.data["importance"] = {"skipped": f"failed: {_error(exc)}"}
                report.add_caught("importance", caught)
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a model is a failure too
        report.data["ok"] = False
        report.data["error"] = f"{phase} failed: {_error(exc)}"
        if not isinstance(exc, MemoryError):
            traceback.print_exc()
    report.data["timings_ms"]["total"] = round((time.perf_counter() - t_start) * 1000, 2)
    report.emit()
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stderr.flush()
    # No interpreter shutdown: a model's __del__ / atexit hooks / threads get no last word.
    os._exit(code)
