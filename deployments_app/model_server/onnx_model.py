"""An ONNX model (converted at validation by the portal) behind the estimator interface that
server.py's ModelState uses: predict, predict_proba (classifiers), classes_, n_features_in_.

Only onnxruntime and numpy are needed (an ONNX edge bundle has no scikit-learn). The graph's
metadata, written by the portal's converter, says how its inputs are laid out:
``portal.inputs`` = [{"name", "kind"}] with kind "matrix" (one float matrix of all
features), "number"/"string" (one column each, in the order of the model's columns) or
"text" (one document per row); ``portal.classes`` = the classifier's classes in order.
Inputs are cast to float32, as in the converted graph.
"""

from __future__ import annotations

import json
import os

import numpy as np


class OnnxModel:
    accepts_strings = False

    def __init__(self, path: str):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        threads = int(os.environ.get("ONNX_THREADS", "1"))
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            path, options, providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        inputs = json.loads(meta.get("portal.inputs") or "null")
        if not inputs:
            inputs = [{"name": i.name, "kind": "matrix"} for i in self.session.get_inputs()][:1]
        self.inputs = [(i["name"], i["kind"]) for i in inputs]
        self.accepts_strings = any(kind in ("string", "text") for _, kind in self.inputs)
        classes = json.loads(meta.get("portal.classes") or "null")
        outputs = [o.name for o in self.session.get_outputs()]
        self.label_output = outputs[0]
        self.proba_output = outputs[1] if len(outputs) > 1 and classes is not None else None
        if classes is not None:
            self.classes_ = np.asarray(classes)
        if self.inputs[0][1] == "matrix":
            shape = self.session.get_inputs()[0].shape
            last = shape[-1] if shape else None
            self.n_features_in_ = last if isinstance(last, int) else None
        elif self.inputs[0][1] != "text":
            self.n_features_in_ = len(self.inputs)
        if self.proba_output is not None:
            self.predict_proba = self._predict_proba

    def _feeds(self, x) -> dict:
        arr = np.asarray(x, dtype=object) if not isinstance(x, np.ndarray) else x
        (first, kind), *_ = self.inputs
        if kind == "matrix":
            return {first: np.asarray(arr, dtype=np.float32)}
        if kind == "text":
            return {first: np.asarray([[str(v)] for v in arr.reshape(-1)], dtype=object)}
        feeds = {}
        for j, (name, col_kind) in enumerate(self.inputs):
            col = arr[:, j]
            if col_kind == "string":
                feeds[name] = np.asarray([["" if v is None else str(v)] for v in col], dtype=object)
            else:
                feeds[name] = np.asarray(col, dtype=np.float32).reshape(-1, 1)
        return feeds

    def _run(self, x, output: str):
        return self.session.run([output], self._feeds(x))[0]

    def predict(self, x):
        out = np.asarray(self._run(x, self.label_output))
        return out.reshape(-1) if out.ndim == 2 and out.shape[1] == 1 else out

    def _predict_proba(self, x):
        value = self._run(x, self.proba_output)
        if isinstance(value, list):  # ZipMap: one {class: p} per row
            return np.asarray([[row[c] for c in self.classes_.tolist()] for row in value])
        return np.asarray(value)
