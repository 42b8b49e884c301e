"""Convert one uploaded model to ONNX and check it against the original. Runs INSIDE the sandbox.

    python onnx_convert.py MODEL_PATH FORMAT OPTIONS_JSON

OPTIONS_JSON: ``{"example": rows, "columns": [...] | null, "schema": {...}, "allowlist":
path | null, "out": path of the .onnx to write, "tolerance": float, "sample_rows": int,
"opsets": [{"": 17, "ai.onnx.ml": 3}, ...]}``. The model is loaded by ``safe_load.py``
(copied beside this script, as for inspect_model.py), converted with skl2onnx (each opset
set in turn until one converts), run with onnxruntime on the input example and on a
reference sample drawn around it (seeded), and compared with the original's predict and
predict_proba. Exactly one JSON object goes to the original standard output::

    {"status": "converted" | "not converted" | "failed parity", "reason": str,
     "opset": {...}, "max_delta": float | None, "tolerance": float, "rows_checked": int,
     "labels_identical": bool | None, "inputs": [...], "outputs": [...], "versions": {...},
     "timings_ms": {...}}

Standalone: the standard library and the environment's packages only.
"""

import json
import os
import sys
import time
import traceback
import warnings

_REPORT_FD = os.dup(1)
os.dup2(2, 1)
sys.stdout = sys.stderr

TEXT_VECTORIZERS = ("TfidfVectorizer", "CountVectorizer")
MAX_TEXT = 1500


def _clip(text):
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "...[truncated]"


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _emit(data):
    with os.fdopen(_REPORT_FD, "w") as out:
        out.write(json.dumps(data, allow_nan=False, default=str))
        out.write("\n")


def load_model(path, fmt, options):
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import safe_load

    allowlist = safe_load.load_allowlist(options.get("allowlist"))
    return safe_load.load_model(path, fmt, allowlist=allowlist)


def _walk(est, depth=0):
    if est is None or depth > 20 or isinstance(est, str):
        return
    yield est
    for attr in ("steps", "transformer_list"):
        for item in getattr(est, attr, None) or ():
            if isinstance(item, tuple) and len(item) >= 2:
                yield from _walk(item[1], depth + 1)
    for item in getattr(est, "transformers_", None) or getattr(est, "transformers", None) or ():
        if isinstance(item, tuple) and len(item) >= 2:
            yield from _walk(item[1], depth + 1)


def _has_column_transformer(est):
    return any(type(e).__name__ == "ColumnTransformer" for e in _walk(est))


# --------------------------------------------------------------------------- inputs


def plan_inputs(est, schema, example):
    """[(name, kind)] the ONNX graph takes: one input per column for a ColumnTransformer
    that selects by name (kind "string" or "number"), else one matrix "X" (or a text "X")."""
    columns = schema.get("columns")
    types = schema.get("column_types") or {}
    if columns and _has_column_transformer(est):
        return [(c, "string" if types.get(c) == "string" else "number") for c in columns]
    if schema.get("text_input"):
        return [("X", "text")]
    n = schema.get("n_features") or (len(example[0]) if example else None)
    if not n:
        raise ValueError("the model does not tell its number of features")
    return [("X", "matrix")]


def initial_types(plan, n_features):
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types = []
    for name, kind in plan:
        if kind in ("string", "text"):
            types.append((name, StringTensorType([None, 1])))
        elif kind == "number":
            types.append((name, FloatTensorType([None, 1])))
        else:
            types.append((name, FloatTensorType([None, n_features])))
    return types


def feeds(plan, rows):
    """The onnxruntime feeds of rows (lists of values, in the plan's column order)."""
    import numpy as np

    if plan == [("X", "text")]:
        return {"X": np.asarray([[str(r if not isinstance(r, list) else r[0])] for r in rows])}
    if plan == [("X", "matrix")]:
        return {"X": np.asarray(rows, dtype=np.float32)}
    out = {}
    for i, (name, kind) in enumerate(plan):
        col = [r[i] for r in rows]
        if kind == "string":
            out[name] = np.asarray([[("" if v is None else str(v))] for v in col], dtype=object)
        else:
            out[name] = np.asarray([[v] for v in col], dtype=np.float32)
    return out


def sklearn_input(est, plan, rows, schema):
    import numpy as np

    columns = schema.get("columns")
    if plan == [("X", "text")]:
        return [r if isinstance(r, str) else r[0] for r in rows]
    if columns and (
        getattr(est, "feature_names_in_", None) is not None or _has_column_transformer(est)
    ):
        import pandas as pd

        frame = pd.DataFrame(rows, columns=columns)
        for name, kind in plan:
            if kind == "number":
                frame[name] = frame[name].astype(float)
        return frame
    return np.asarray(rows, dtype=float)


def reference_sample(plan, rows, count, seed=20):
    """`count` rows drawn around the example (seeded): each numeric value is an example
    value of its column moved by up to a quarter of the column's spread (or of its size),
    each text value a mix of the example's words for its column."""
    import numpy as np

    if not rows or count <= 0:
        return []
    rng = np.random.default_rng(seed)
    width = 1 if plan == [("X", "text")] else len(rows[0])
    out = []
    for _ in range(count):
        row = []
        for j in range(width):
            vals = (
                [r if isinstance(r, str) else r[j] for r in rows]
                if width == 1 and isinstance(rows[0], str)
                else [r[j] for r in rows]
            )
            kind = plan[j][1] if len(plan) > 1 else plan[0][1]
            if kind in ("string", "text"):
                words = " ".join(str(v) for v in vals).split() or ["x"]
                k = int(rng.integers(1, min(len(words), 12) + 1))
                row.append(" ".join(rng.choice(words, size=k).tolist()))
            else:
                nums = np.asarray(vals, dtype=float)
                spread = float(nums.max() - nums.min()) or max(abs(float(nums.mean())), 1.0)
                base = float(rng.choice(nums))
                row.append(base + float(rng.uniform(-0.25, 0.25)) * spread)
        out.append(row[0] if plan == [("X", "text")] and isinstance(rows[0], str) else row)
    return out


# --------------------------------------------------------------------------- convert


def text_options(est):
    """skl2onnx options for every text vectorizer: sklearn's default token pattern as a
    regular expression onnxruntime's tokenizer knows (no inline (?u) flag) and a locale that
    every runtime has (the converter's default, en_US, is missing on slim hosts)."""
    options = {}
    for sub in _walk(est):
        if type(sub).__name__ in TEXT_VECTORIZERS:
            opts = {"locale": "C"}
            pattern = getattr(sub, "token_pattern", None)
            if getattr(sub, "analyzer", "word") == "word" and pattern:
                opts["tokenexp"] = pattern.replace("(?u)", "")
            options[id(sub)] = opts
    return options


def convert(est, types, opsets, report):
    from skl2onnx import convert_sklearn

    errors = []
    options = text_options(est) or None
    for opset in opsets:
        target = {k: int(v) for k, v in opset.items()}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                onx = convert_sklearn(
                    est, initial_types=types, target_opset=target, options=options
                )
            report["opset"] = target
            if errors:
                report["notes"] = [f"opset {t}: {m}" for t, m in errors]
            return onx
        except Exception as exc:  # noqa: BLE001 - the next opset set, else the reason
            errors.append((target, f"{type(exc).__name__}: {_clip(exc)}"))
    messages = {message for _, message in errors}
    tried = [target for target, _ in errors]
    if len(messages) == 1:  # the same refusal at every opset: say it once
        raise RuntimeError(f"{messages.pop()} (opsets tried: {tried})")
    raise RuntimeError("; ".join(f"opset {target}: {message}" for target, message in errors))


def _outputs(sess):
    names = [o.name for o in sess.get_outputs()]
    label = names[0]
    proba = names[1] if len(names) > 1 else None
    return label, proba


def _proba_matrix(value, classes):
    import numpy as np

    if isinstance(value, list) and value and isinstance(value[0], dict):  # ZipMap
        return np.asarray([[row[c] for c in classes] for row in value], dtype=float)
    return np.asarray(value, dtype=float)


def parity(est, sess, plan, rows, schema, tolerance):
    """max |delta| (scaled by max(1, |original|)) over predictions, or probabilities for a
    classifier; whether labels are identical."""
    import numpy as np

    x = sklearn_input(est, plan, rows, schema)
    want = np.asarray(est.predict(x))
    label_name, proba_name = _outputs(sess)
    got = sess.run(None, feeds(plan, rows))
    names = [o.name for o in sess.get_outputs()]
    got_label = np.asarray(got[names.index(label_name)]).reshape(want.shape[0], -1)
    classes = getattr(est, "classes_", None)
    if classes is not None and proba_name is not None:
        labels_ok = bool(np.array_equal(got_label.ravel().astype(str), want.astype(str)))
        want_p = np.asarray(est.predict_proba(x), dtype=float)
        got_p = _proba_matrix(got[names.index(proba_name)], list(classes))
        delta = np.abs(got_p - want_p) / np.maximum(1.0, np.abs(want_p))
    else:
        labels_ok = None
        want_f = want.astype(float).reshape(want.shape[0], -1)
        got_f = got_label.astype(float).reshape(want_f.shape)
        delta = np.abs(got_f - want_f) / np.maximum(1.0, np.abs(want_f))
    max_delta = float(delta.max()) if delta.size else 0.0
    return labels_ok, max_delta


def main(argv):
    t0 = time.perf_counter()
    report = {"ok": True, "status": "not converted", "reason": "", "opset": None, "max_delta": None,
              "tolerance": None, "rows_checked": 0, "labels_identical": None,
              "timings_ms": {}, "versions": {}}  # fmt: skip
    phase = "options"
    try:
        with open(argv[3]) as fh:
            options = json.load(fh)
        report["tolerance"] = float(options["tolerance"])
        phase = "import"
        try:
            import onnxruntime
            import skl2onnx  # noqa: F401
        except ImportError as exc:
            report["reason"] = f"skl2onnx/onnxruntime are not installed in this environment ({exc})"
            return report
        packages = ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy")
        report["versions"] = {n: _version(n) for n in packages}
        phase = "load"
        est = load_model(argv[1], argv[2], options)
        schema = options.get("schema") or {}
        example = options.get("example") or []
        if example and isinstance(example[0], dict):
            cols = options.get("columns") or schema.get("columns") or list(example[0])
            example = [[r.get(c) for c in cols] for r in example]
        phase = "inputs"
        plan = plan_inputs(est, schema, example)
        types = initial_types(plan, schema.get("n_features") or len(example[0]))
        report["inputs"] = [{"name": n, "kind": k} for n, k in plan]
        phase = "convert"
        t = time.perf_counter()
        try:
            onx = convert(est, types, options["opsets"], report)
        except Exception as exc:  # noqa: BLE001
            report["reason"] = f"skl2onnx cannot convert this model: {_clip(exc)}"
            return report
        report["timings_ms"]["convert"] = round((time.perf_counter() - t) * 1000, 1)
        # How the bundle's server (model_server/onnx_model.py) feeds the graph.
        meta = {"portal.inputs": json.dumps(report["inputs"])}
        classes = getattr(est, "classes_", None)
        if classes is not None and hasattr(est, "predict_proba"):
            meta["portal.classes"] = json.dumps(classes.tolist())
        for key, value in meta.items():
            prop = onx.metadata_props.add()
            prop.key, prop.value = key, value
        data = onx.SerializeToString()
        phase = "runtime"
        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        try:
            sess = onnxruntime.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            report["reason"] = f"onnxruntime cannot load the converted model: {_clip(exc)}"
            return report
        report["outputs"] = [o.name for o in sess.get_outputs()]
        phase = "parity"
        t = time.perf_counter()
        sample = reference_sample(plan, example, int(options.get("sample_rows") or 0))
        rows = list(example) + sample
        try:
            labels_ok, max_delta = parity(est, sess, plan, rows, schema, report["tolerance"])
        except Exception as exc:  # noqa: BLE001
            report["status"] = "failed parity"
            report["reason"] = f"the converted model could not be compared: {_clip(exc)}"
            return report
        report["timings_ms"]["parity"] = round((time.perf_counter() - t) * 1000, 1)
        report.update(rows_checked=len(rows), example_rows=len(example),
                      labels_identical=labels_ok, max_delta=max_delta)  # fmt: skip
        if labels_ok is False:
            report["status"] = "failed parity"
            report["reason"] = "the converted model predicts other labels than the original"
        elif max_delta > report["tolerance"]:
            report["status"] = "failed parity"
            report["reason"] = (
                f"max |delta| {max_delta:.3g} exceeds the tolerance {report['tolerance']:g}"
            )
        else:
            report["status"] = "converted"
            with open(options["out"], "wb") as fh:
                fh.write(data)
    except BaseException as exc:  # noqa: BLE001
        report["status"] = "not converted"
        report["reason"] = f"{phase} failed: {_clip(f'{type(exc).__name__}: {exc}')}"
        traceback.print_exc()
    finally:
        report["timings_ms"]["total"] = round((time.perf_counter() - t0) * 1000, 1)
    return report


if __name__ == "__main__":
    try:
        _emit(main(sys.argv))
    finally:
        sys.stderr.flush()
        os._exit(0)
