"""Model server: one scikit-learn model behind a raw ASGI application.

This file runs inside every deployment's container (and as a local subprocess
where Docker is missing), with the model's own virtual environment. It must
stay self-contained: standard library, numpy, the model's libraries
(scikit-learn, joblib, skops, pandas when the model needs named columns) and
uvicorn (with uvloop and httptools). Never import Django or the portal here.

Start it with::

    python server.py --model /model/model.bin --format joblib --name NAME --version 3 \\
        --host 0.0.0.0 --port 8080

or ``python -m server`` with the same settings in the environment: MODEL_PATH,
MODEL_FORMAT (joblib|pickle|skops), MODEL_NAME, MODEL_VERSION, MODEL_COLUMNS
(JSON list or empty), MODEL_ALLOWLIST (the environment's allowlist file), HOST, PORT, MAX_BODY_BYTES
(default 10 MB), ACCESS_LOG=1 (one line per request on stderr), UDS (listen on this unix
socket instead of HOST:PORT), REPLICA_TOKEN_FILE (a file holding the token every request
must carry in ``X-Portal-Replica-Token``; else 401), MODEL_BATCH_MAX_SIZE (adaptive batching:
most rows in one predict call; 0 or 1, the default, is off) and MODEL_BATCH_MAX_WAIT_MS (how
long an open batch may wait for more requests; default 0). See ``Batcher``. MODEL_REFERENCE
(a JSON list of raw rows: the version's input example) is the reference sample explanations
compare with (``"params": {"explain": true}``; see explain.py beside this file).
Command-line options win over the environment.

The portal runs replicas with ``--uds`` in a directory only it can reach and with a token
file: only its proxy can call them. Without the token ``GET /health`` still answers (Docker's
HEALTHCHECK runs inside the container without it), but says nothing beyond "ready".

The model file may be encrypted (the portal's artifact format, artifact_cipher.py beside
this file): then MODEL_KEY_FILE (``--key-file``) names a file holding its data key (hex),
which the portal writes into the replica's private directory at start; the server decrypts
in memory and loads from there, so the image never holds a usable model. An encrypted model
without its key, a key that does not open it, or a key with a plaintext model stops the
server with a ``load_failed`` line saying which.

The model is loaded once, before the port is bound: when the port accepts
connections, predictions are ready. ``--port 0`` picks a free port; the
"listening" line written to stderr says which.

Endpoints:
    GET  /health                       {"status": "ready", "model": ..., "version": ...}
                                       (+ "batching": {...counters} when batching is on)
    POST /predict                      {"instances": [[...]] | [{col: v}], "params": {...}}
    GET  /v2, /v2/health/live, /v2/health/ready
    GET  /v2/models/NAME[/versions/V]  Open Inference Protocol metadata
    GET  /v2/models/NAME[/versions/V]/ready
    POST /v2/models/NAME[/versions/V]/infer
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import json
import math
import os
import socket
import sys
import time

import numpy as np

SERVER_NAME = "model-portal-sklearn-server"
SERVER_VERSION = "1"
DEFAULT_MAX_BODY = 10 * 1024 * 1024
# Bodies up to this size are parsed and predicted on the event loop; larger ones on a thread.
INLINE_BODY_BYTES = 16 * 1024

# Estimators that take strings (or arbitrary objects) as input: when a model
# contains one, non-numeric input is passed through instead of rejected.
STRING_ESTIMATORS = frozenset(
    {
        "ColumnTransformer",
        "CountVectorizer",
        "DictVectorizer",
        "FeatureHasher",
        "FunctionTransformer",
        "HashingVectorizer",
        "OneHotEncoder",
        "OrdinalEncoder",
        "SimpleImputer",
        "TargetEncoder",
        "TfidfVectorizer",
    }
)


class BadRequest(Exception):
    """The request is wrong: answered with 400 (or ``status``)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------
# configuration and model loading
# --------------------------------------------------------------------------


def _json_list(value: str | None, what: str) -> list | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not value.startswith("["):
        return [part.strip() for part in value.split(",") if part.strip()]
    parsed = json.loads(value)
    if not isinstance(parsed, list):
        raise SystemExit(f"{what} must be a JSON list")
    return parsed or None


def parse_config(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="Serve one scikit-learn model over HTTP.")
    parser.add_argument("--model", default=env.get("MODEL_PATH", "/model/model.bin"))
    parser.add_argument(
        "--format",
        default=env.get("MODEL_FORMAT") or None,
        choices=["joblib", "pickle", "skops", "onnx"],
        help="default: from the file extension (.skops, .pkl/.pickle, .onnx, else joblib)",
    )
    parser.add_argument("--name", default=env.get("MODEL_NAME", "model"))
    parser.add_argument("--version", default=env.get("MODEL_VERSION", "1"))
    parser.add_argument("--columns", default=env.get("MODEL_COLUMNS"), help="JSON list")
    parser.add_argument(
        "--reference", default=env.get("MODEL_REFERENCE"), help="JSON list of rows (explain)"
    )
    parser.add_argument("--host", default=env.get("HOST", "0.0.0.0"))  # noqa: S104 - container
    parser.add_argument("--port", type=int, default=int(env.get("PORT", "8080")))
    parser.add_argument("--uds", default=env.get("UDS") or None, help="unix socket path")
    parser.add_argument("--token-file", default=env.get("REPLICA_TOKEN_FILE") or None)
    parser.add_argument("--key-file", default=env.get("MODEL_KEY_FILE") or None)
    parser.add_argument(
        "--max-body-bytes", type=int, default=int(env.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY))
    )
    parser.add_argument(
        "--access-log", action="store_true", default=env.get("ACCESS_LOG", "") == "1"
    )
    parser.add_argument("--log-level", default=env.get("LOG_LEVEL", "warning"))
    parser.add_argument(
        "--batch-max-size",
        type=int,
        default=int(env.get("MODEL_BATCH_MAX_SIZE") or 0),
        help="rows per batched predict call; 0 or 1: no batching",
    )
    parser.add_argument(
        "--batch-max-wait-ms",
        type=float,
        default=float(env.get("MODEL_BATCH_MAX_WAIT_MS") or 0),
        help="how long an open batch may wait for more requests (only under concurrency)",
    )
    cfg = parser.parse_args(argv)
    cfg.columns = _json_list(cfg.columns, "MODEL_COLUMNS")
    cfg.reference = json.loads(cfg.reference) if cfg.reference else None
    if cfg.format is None:
        lower = cfg.model.lower()
        if lower.endswith(".skops"):
            cfg.format = "skops"
        elif lower.endswith((".pkl", ".pickle")):
            cfg.format = "pickle"
        elif lower.endswith(".onnx"):
            cfg.format = "onnx"
        else:
            cfg.format = "joblib"
    return cfg


def _loader_dir() -> str:
    """Where safe_load.py is: beside this file in a build, models_app/validation in a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(os.path.join(here, "safe_load.py")):
        return here
    return os.path.join(os.path.dirname(os.path.dirname(here)), "models_app", "validation")


class ModelKeyError(Exception):
    """The model file is encrypted and its key is missing or does not open it."""


def _model_source(path: str, key_file: str | None):
    """The path of a plaintext model, or the decrypted model in memory (a BytesIO)."""
    import artifact_cipher

    with open(path, "rb") as fh:
        encrypted = artifact_cipher.is_encrypted(fh.read(len(artifact_cipher.MAGIC)))
    if not encrypted:
        if key_file:
            raise ModelKeyError(f"a model key was given but {path} is not encrypted")
        return path
    if not key_file:
        raise ModelKeyError(
            f"{path} is encrypted and no key was given (MODEL_KEY_FILE): the portal passes "
            "it when it starts the replica"
        )
    try:
        with open(key_file, encoding="ascii") as fh:
            key = bytes.fromhex(fh.read().strip())
    except (OSError, ValueError) as exc:
        raise ModelKeyError(f"cannot read the model key file {key_file}: {exc}") from None
    try:
        return artifact_cipher.decrypt_to_memory(path, key)
    except artifact_cipher.ArtifactCipherError as exc:
        raise ModelKeyError(f"the model key does not open {path}: {exc}") from None


def load_model(path: str, fmt: str, key_file: str | None = None):
    """Load the model through the restricted loader (safe_load.py beside this file).

    The portal scanned and validated the file, but this layer does not rely on that: the
    loader enforces this environment's allowlist on every opcode. The allowlist is
    MODEL_ALLOWLIST, else allowlist.json beside the loader (written at build time), else
    enumerated here. An ONNX file (an ONNX edge bundle's) is run by onnxruntime instead
    (onnx_model.py beside this file): no pickle, no scikit-learn.
    """
    if fmt == "onnx":
        here = os.path.dirname(os.path.abspath(__file__))
        if here not in sys.path:
            sys.path.insert(0, here)
        import onnx_model

        return onnx_model.OnnxModel(path)
    loader_dir = _loader_dir()
    if loader_dir not in sys.path:
        sys.path.insert(0, loader_dir)
    import safe_load

    listed = os.environ.get("MODEL_ALLOWLIST") or os.path.join(loader_dir, "allowlist.json")
    allowlist = safe_load.load_allowlist(listed if os.path.exists(listed) else None)
    source = _model_source(path, key_file)
    return safe_load.load_model(source, fmt, allowlist=allowlist)


def _walk(est, depth: int = 0):
    """Yield an estimator and the estimators nested in pipelines/transformers."""
    if est is None or depth > 20 or isinstance(est, str):
        return
    yield est
    for attr in ("steps", "transformer_list"):
        for item in getattr(est, attr, None) or ():
            if isinstance(item, tuple) and len(item) >= 2:
                yield from _walk(item[1], depth + 1)
    for attr in ("transformers_", "transformers"):
        items = getattr(est, attr, None)
        if items:
            for item in items:
                if isinstance(item, tuple) and len(item) >= 2:
                    yield from _walk(item[1], depth + 1)
            break
    for attr in ("estimator", "base_estimator", "regressor", "classifier"):
        sub = getattr(est, attr, None)
        if sub is not None and hasattr(sub, "fit"):
            yield from _walk(sub, depth + 1)


def _column_transformer_names(model) -> list[str] | None:
    """String column selectors of ColumnTransformers (in order), or None."""
    names: list[str] = []
    found = False
    for est in _walk(model):
        if type(est).__name__ != "ColumnTransformer":
            continue
        for item in getattr(est, "transformers", None) or ():
            if len(item) < 3:
                continue
            cols = item[2]
            if isinstance(cols, str):
                cols = [cols]
            if isinstance(cols, list | tuple) and cols and all(isinstance(c, str) for c in cols):
                found = True
                names.extend(c for c in cols if c not in names)
    return names if found else None


def _dtype_name(values) -> str:
    arr = np.asarray(values)
    kind = arr.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    if kind == "O" and arr.size:
        first = arr.flat[0]
        if isinstance(first, bool | np.bool_):
            return "BOOL"
        if isinstance(first, int | np.integer):
            return "INT64"
        if isinstance(first, float | np.floating):
            return "FP64"
    return "BYTES"


class ModelState:
    """The loaded model and what the server derived from it."""

    def __init__(self, model, name: str, version, columns: list[str] | None = None):
        if not hasattr(model, "predict"):
            raise TypeError(f"{type(model).__name__} has no predict method")
        self.model = model
        self.name = name
        self.version = version
        self.version_str = str(version)
        fitted_names = getattr(model, "feature_names_in_", None)
        fitted_names = [str(c) for c in fitted_names] if fitted_names is not None else None
        ct_names = _column_transformer_names(model)
        self.columns = list(columns) if columns else (fitted_names or ct_names)
        # A DataFrame only when the model itself wants names; otherwise numpy
        # (sklearn warns when a model fitted without names receives them).
        self.use_frame = bool(self.columns) and (fitted_names is not None or ct_names is not None)
        if self.use_frame:
            import pandas

            self.pd = pandas
        n_in = getattr(model, "n_features_in_", None)
        self.n_features = len(self.columns) if self.columns else n_in
        self.accepts_strings = bool(getattr(model, "accepts_strings", False)) or any(
            type(e).__name__ in STRING_ESTIMATORS for e in _walk(model)
        )
        try:
            self.has_proba = hasattr(model, "predict_proba")
        except Exception:  # noqa: BLE001 - some meta-estimators raise other errors
            self.has_proba = False
        classes = getattr(model, "classes_", None)
        self.classes = _plain(np.asarray(classes).tolist()) if classes is not None else None

    # -- input ---------------------------------------------------------------

    def records_to_rows(self, records: list) -> list:
        if not self.columns:
            raise BadRequest(
                "this model has no column names: send each instance as a list of "
                f"{self.n_features if self.n_features is not None else 'its'} feature values"
            )
        cols = self.columns
        known = set(cols)
        rows = []
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise BadRequest(f"instance {i}: mix of records and lists")
            missing = [c for c in cols if c not in rec]
            if missing:
                raise BadRequest(f"instance {i}: missing column(s) {missing}")
            if len(rec) != len(cols):
                extra = sorted(k for k in rec if k not in known)
                raise BadRequest(f"instance {i}: unknown column(s) {extra}; expected {cols}")
            rows.append([rec[c] for c in cols])
        return rows

    def build_input(self, instances):
        """Turn a JSON list of rows or records into what predict takes."""
        if not isinstance(instances, list):
            raise BadRequest("instances must be a list of rows or records")
        if not instances:
            raise BadRequest("no instances given")
        if isinstance(instances[0], dict):
            instances = self.records_to_rows(instances)
        n = self.n_features
        if self.use_frame and self.accepts_strings:
            # Text or categorical columns: keep values as sent, pandas infers dtypes.
            self._check_rows(instances)
            return self.pd.DataFrame(instances, columns=self.columns)
        try:
            arr = np.asarray(instances, dtype=float)
        except (ValueError, TypeError) as exc:
            arr = None
            reason = str(exc)
        if arr is not None:
            if arr.ndim != 2:
                raise BadRequest(
                    "each instance must be a list of "
                    f"{n if n is not None else 'feature'} values (got shape {list(arr.shape)})"
                )
            if n is not None and arr.shape[1] != n:
                raise BadRequest(f"expected {n} features per instance, got {arr.shape[1]}")
            if self.use_frame:
                return self.pd.DataFrame(arr, columns=self.columns)
            return arr
        # Not a numeric matrix: ragged rows, nested values or strings.
        self._check_rows(instances)
        if not self.accepts_strings:
            raise BadRequest(f"non-numeric feature value: {reason}")
        if self.use_frame:
            return self.pd.DataFrame(instances, columns=self.columns)
        return np.asarray(instances, dtype=object)

    def _check_rows(self, instances: list) -> None:
        n = self.n_features
        for i, row in enumerate(instances):
            if not isinstance(row, list):
                raise BadRequest(f"instance {i} is not a list of feature values")
            if n is not None and len(row) != n:
                raise BadRequest(
                    f"expected {n} features per instance, got {len(row)} (instance {i})"
                )
            for v in row:
                if isinstance(v, dict | list):
                    raise BadRequest(f"instance {i}: feature values must be scalars")

    # -- prediction ----------------------------------------------------------

    def predict(self, x, proba: bool):
        pred = self.model.predict(x)
        probs = self.model.predict_proba(x) if proba and self.has_proba else None
        return pred, probs

    # -- explanations (explain.py) -----------------------------------------------

    reference: list | None = None  # raw rows explanations compare with (MODEL_REFERENCE)
    _explainer = None

    def explain(self, instances: list) -> tuple[list, dict]:
        """Per-row contributions for raw instances (rows or records)."""
        if self._explainer is None:
            here = os.path.dirname(os.path.abspath(__file__))
            if here not in sys.path:
                sys.path.insert(0, here)
            import explain

            n = self.n_features or (len(instances[0]) if instances else 0)
            self._explain_mod = explain
            self._explainer = explain.Explainer(
                self.model,
                features=self.columns or [f"x{i}" for i in range(n)],
                to_input=self._explain_input,
                reference=[
                    self.records_to_rows([r])[0] if isinstance(r, dict) else r
                    for r in (self.reference or [])
                    if isinstance(r, dict | list)
                ],
                is_classifier=self.classes is not None,
            )
        if instances and isinstance(instances[0], dict):
            instances = self.records_to_rows(instances)
        try:
            return self._explainer.explain(instances)
        except self._explain_mod.ExplainError as exc:
            raise BadRequest(str(exc), 422) from None

    def _explain_input(self, values):
        """A 2-D object array of raw values -> what predict takes (as build_input would)."""
        if self.use_frame:
            return self.pd.DataFrame(values, columns=self.columns).infer_objects()
        if self.accepts_strings:
            return values
        return values.astype(float)

    # -- batching --------------------------------------------------------------

    def batch_key(self, x):
        """Inputs with equal keys can be stacked without changing any value or dtype."""
        if isinstance(x, np.ndarray):
            return ("array", x.dtype.str, x.shape[1:])
        return ("frame", tuple(x.columns), tuple(str(d) for d in x.dtypes))

    def stack(self, xs: list):
        if isinstance(xs[0], np.ndarray):
            return np.concatenate(xs)
        return self.pd.concat(xs, ignore_index=True)


def _parse_json(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("the JSON body must be an object")
    return payload


def _plain(value):
    """numpy scalars/arrays -> plain JSON values; NaN/inf -> None."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _tolist(arr) -> list:
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            return _plain(arr.tolist())
        return arr.tolist()
    if arr.dtype.kind in "iub":
        return arr.tolist()
    return _plain(arr.tolist())


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


_encode = json.JSONEncoder(
    default=_json_default, separators=(",", ":"), ensure_ascii=False, allow_nan=True
).encode


def _dumps(obj) -> bytes:
    return _encode(obj).encode()


def _flatten(data) -> list:
    if not isinstance(data, list):
        raise BadRequest("tensor data must be a list")
    if data and isinstance(data[0], list):
        out: list = []
        stack = [data]
        while stack:  # iterative flatten keeps order with a reversed stack
            top = stack.pop()
            if isinstance(top, list):
                stack.extend(reversed(top))
            else:
                out.append(top)
        return out
    return data


# --------------------------------------------------------------------------
# adaptive batching
# --------------------------------------------------------------------------


def _rows(value, start: int, end: int):
    """Rows start:end of a predict/predict_proba result (a list of arrays: multi-output)."""
    if isinstance(value, list):
        return [_rows(v, start, end) for v in value]
    return value[start:end]


class _Waiting:
    __slots__ = ("future", "key", "proba", "rows", "x")

    def __init__(self, x, rows: int, proba: bool, key, future):
        self.x = x
        self.rows = rows
        self.proba = proba
        self.key = key
        self.future = future


class Batcher:
    """Stacks requests that arrive together into one predict call on the predict thread.

    While a batch is computed, new requests queue on the event loop. When the thread is free
    it takes the queued requests in order, up to ``max_rows`` rows (a request bigger than that
    runs alone; requests whose inputs cannot be stacked unchanged wait for the next batch).
    A batch opens when the thread is free to take it and requests are waiting (those queued
    behind a running batch have waited already); it closes at ``max_rows`` or ``max_wait``
    after it opened. It waits at all only when the previous batch held several requests: a
    lone request on an idle server runs at once, so batching adds nothing at concurrency 1
    but the hop to the predict thread, and under load the wait lets the callers just answered
    join the next batch instead of splitting the load in two halves that alternate
    (measured in bench/batching_bench.py).

    predict_proba runs for the whole batch when any request asked for it, and is returned only
    to those that did. When the batched call raises, every request of the batch runs again
    alone, so only the one that caused the error fails, with the error it gets unbatched.
    Stacking changes no value and no dtype (``ModelState.batch_key`` keeps apart what would),
    and scikit-learn predicts rows independently, so answers equal the unbatched ones (tested
    bit for bit on forests and linear models; a BLAS kernel could in principle round a dot
    product differently at another batch shape, one more reason batching is opt-in).
    """

    def __init__(self, state: ModelState, pool, max_rows: int, max_wait_ms: float):
        self.state = state
        self.pool = pool
        self.max_rows = max_rows
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._running = False
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._last_requests = 0
        self.batches = 0  # predict calls made for batches (retries not counted)
        self.requests = 0
        self.rows = 0
        self.largest = 0  # most requests in one batch
        self.retried = 0  # batches that raised and ran again request by request

    def stats(self) -> dict:
        return {
            "max_size": self.max_rows,
            "max_wait_ms": self.max_wait * 1000,
            "batches": self.batches,
            "requests": self.requests,
            "rows": self.rows,
            "largest": self.largest,
            "retried": self.retried,
        }

    async def predict(self, x, proba: bool):
        loop = asyncio.get_running_loop()
        item = _Waiting(x, int(x.shape[0]), proba, self.state.batch_key(x), loop.create_future())
        self._queue.append(item)
        if self._arrived is not None:
            self._arrived.set()
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        return await item.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Waiting] = []
        try:
            while self._queue:
                if self.max_wait > 0 and self._last_requests > 1:
                    await self._gather(loop)
                batch = self._take()
                if not batch:
                    continue
                self._last_requests = len(batch)
                results = await loop.run_in_executor(self.pool, self._run, batch)
                for item, result in zip(batch, results, strict=True):
                    if item.future.done():  # the client went away
                        continue
                    if isinstance(result, BaseException):
                        item.future.set_exception(result)
                    else:
                        item.future.set_result(result)
                batch = []
        except BaseException as exc:  # never leave a request waiting forever
            for item in [*batch, *self._queue]:
                if not item.future.done():
                    item.future.set_exception(exc)
            self._queue.clear()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running = False

    def _queued_rows(self) -> int:
        key = self._queue[0].key
        return sum(item.rows for item in self._queue if item.key == key)

    async def _gather(self, loop) -> None:
        """Wait for more requests until the batch is full or max_wait has passed."""
        deadline = loop.time() + self.max_wait
        while self._queued_rows() < self.max_rows:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._arrived = asyncio.Event()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:  # asyncio.TimeoutError is TimeoutError from 3.11
                return
            finally:
                self._arrived = None

    def _take(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        rows = 0
        later: collections.deque[_Waiting] = collections.deque()
        queue = self._queue
        while queue:
            item = queue.popleft()
            if item.future.done():
                continue
            if not batch:
                batch.append(item)
                rows = item.rows
            elif item.key == batch[0].key and rows + item.rows <= self.max_rows:
                batch.append(item)
                rows += item.rows
            else:
                later.append(item)
            if rows >= self.max_rows:
                break
        later.extend(queue)
        self._queue = later
        return batch

    def _run(self, batch: list[_Waiting]) -> list:
        """On the predict thread: one call for the batch, split back by row counts."""
        state = self.state
        self.batches += 1
        self.requests += len(batch)
        self.rows += sum(item.rows for item in batch)
        self.largest = max(self.largest, len(batch))
        if len(batch) == 1:
            return [self._alone(batch[0])]
        try:
            x = state.stack([item.x for item in batch])
            pred, probs = state.predict(x, any(item.proba for item in batch))
        except Exception:  # noqa: BLE001 - find the request that caused it
            self.retried += 1
            return [self._alone(item) for item in batch]
        out = []
        start = 0
        for item in batch:
            end = start + item.rows
            mine = _rows(probs, start, end) if item.proba and probs is not None else None
            out.append((_rows(pred, start, end), mine))
            start = end
        return out

    def _alone(self, item: _Waiting):
        try:
            return self.state.predict(item.x, item.proba)
        except Exception as exc:  # noqa: BLE001 - the request's own error, answered as a 500
            return exc


# --------------------------------------------------------------------------
# the ASGI application
# --------------------------------------------------------------------------


class App:
    """Raw ASGI application; ``state`` is None until the model is loaded."""

    def __init__(
        self,
        state: ModelState | None = None,
        *,
        cfg=None,
        max_body: int | None = None,
        access_log: bool = False,
    ):
        self.state = state
        self.cfg = cfg
        self.max_body = (
            max_body
            if max_body is not None
            else (cfg.max_body_bytes if cfg is not None else DEFAULT_MAX_BODY)
        )
        self.access_log = access_log
        self.token = _read_token(getattr(cfg, "token_file", None))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._health_body = b""
        self.batcher: Batcher | None = None
        if state is not None:
            self._on_ready()

    def _on_ready(self):
        s = self.state
        if getattr(self.cfg, "reference", None):
            s.reference = self.cfg.reference
        self._health_body = _dumps({"status": "ready", "model": s.name, "version": s.version})
        self._v2_prefix = "/v2/models/" + s.name
        max_rows = getattr(self.cfg, "batch_max_size", 0) or 0
        if max_rows > 1:
            self.batcher = Batcher(
                s, self._predict_pool(), max_rows, getattr(self.cfg, "batch_max_wait_ms", 0.0)
            )

    def _predict_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="predict")
        return self._pool

    # -- lifespan --------------------------------------------------------------

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.state is None and self.cfg is not None:
                        self.state = make_state(self.cfg)
                        self._on_ready()
                except Exception as exc:  # noqa: BLE001 - reported to uvicorn, which exits
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP ------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(receive, send)
            return
        start = time.perf_counter() if self.access_log else 0.0
        method = scope["method"]
        path = scope["path"]
        try:
            if self.token and not self._authorized(scope):
                status, body, extra = self._unauthorized(method, path, scope)
            else:
                status, body, extra = await self._dispatch(method, path, scope, receive)
        except BadRequest as exc:
            status, body, extra = exc.status, _dumps({"error": str(exc)}), None
        except Exception as exc:  # noqa: BLE001 - a JSON 500 with the message, no traceback
            message = f"internal error: {type(exc).__name__}: {exc}"
            status, body, extra = 500, _dumps({"error": message}), None
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if extra is not None:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if self.access_log:
            client = scope.get("client") or ("-", 0)
            ms = (time.perf_counter() - start) * 1000
            sys.stderr.write(f'{client[0]} "{method} {path}" {status} {len(body)} {ms:.2f}ms\n')

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"x-portal-replica-token":
                return hmac.compare_digest(value, self.token)
        return False

    def _unauthorized(self, method, path, scope):
        """No token: only a bare liveness answer (Docker's HEALTHCHECK); a wrong one: 401."""
        sent = any(name == b"x-portal-replica-token" for name, _ in scope["headers"])
        if path == "/health" and method in ("GET", "HEAD") and not sent:
            if self.state is None:
                return 503, b'{"status":"loading"}', None
            return 200, b'{"status":"ready"}', None
        return 401, b'{"error":"this replica answers only the portal"}', None

    async def _dispatch(self, method, path, scope, receive):
        if path == "/predict":
            if method != "POST":
                return _method_not_allowed("POST")
            state = self._ready_state()
            return await self._compute(self._predict, state, await self._read_body(scope, receive))
        if path == "/health" or path == "/":
            if method not in ("GET", "HEAD"):
                return _method_not_allowed("GET, HEAD")
            if self.state is None:
                return 503, _dumps({"status": "loading"}), None
            if self.batcher is not None:
                s = self.state
                health = {"status": "ready", "model": s.name, "version": s.version}
                return 200, _dumps({**health, "batching": self.batcher.stats()}), None
            return 200, self._health_body, None
        if path.startswith("/v2"):
            return await self._v2(method, path, scope, receive)
        raise BadRequest(f"not found: {path}", 404)

    def _ready_state(self) -> ModelState:
        if self.state is None:
            raise BadRequest("model not loaded yet", 503)
        return self.state

    async def _compute(self, prepare, state: ModelState, body: bytes):
        """Small calls are answered on the event loop (no thread hop on the hot path); bigger
        ones, parsing included, on the predict thread, so that /health keeps answering while
        a large batch is computed (a liveness probe must not mistake it for a hang).

        `prepare(state, payload)` returns (input, wants predict_proba, finish): the protocol's
        parsing and answer around one shared predict step. With batching on, the predict step
        always runs on the predict thread through the batcher."""
        # Explanations cost many model evaluations: never on the event loop.
        small = len(body) <= INLINE_BODY_BYTES and b'"explain"' not in body
        if self.batcher is None:
            if small:
                return self._answer(prepare, state, _parse_json(body))
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._predict_pool(), lambda: self._answer(prepare, state, _parse_json(body))
            )
        if small:
            x, proba, finish = prepare(state, _parse_json(body))
        else:
            loop = asyncio.get_running_loop()
            x, proba, finish = await loop.run_in_executor(
                self._predict_pool(), lambda: prepare(state, _parse_json(body))
            )
        try:
            pred, probs = await self.batcher.predict(x, proba)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as a 500
            return _predict_failed(exc)
        if getattr(finish, "explains", False):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._predict_pool(), finish, pred, probs)
        return finish(pred, probs)

    @staticmethod
    def _answer(prepare, state: ModelState, payload: dict):
        x, proba, finish = prepare(state, payload)
        try:
            pred, probs = state.predict(x, proba)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as a 500
            return _predict_failed(exc)
        return finish(pred, probs)

    async def _read_body(self, scope, receive) -> bytes:
        limit = self.max_body
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise BadRequest("invalid Content-Length") from None
                if length > limit:
                    raise BadRequest(f"request body over {limit} bytes", 413)
                break
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body", False):
            chunks = [body]
            size = len(body)
            while message.get("more_body", False):
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise BadRequest("client disconnected")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"request body over {limit} bytes", 413)
                chunks.append(chunk)
            body = b"".join(chunks)
        if len(body) > limit:
            raise BadRequest(f"request body over {limit} bytes", 413)
        if not body:
            raise BadRequest("empty request body: JSON expected")
        return body

    # -- /predict --------------------------------------------------------------

    def _predict(self, state: ModelState, payload: dict):
        """POST /predict: (input, wants predict_proba, finish)."""
        if "instances" in payload:
            instances = payload["instances"]
        elif "inputs" in payload:
            instances = payload["inputs"]
            if isinstance(instances, dict):  # columnar: {"col": [v, ...], ...}
                instances = _columns_to_records(instances)
        else:
            raise BadRequest('expected "instances" or "inputs"')
        params = payload.get("params") or payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest('"params" must be an object')
        want_proba = bool(params.get("proba"))
        want_explain = params.get("explain") is True
        x = state.build_input(instances)

        def finish(pred, probs):
            out = {"predictions": _tolist(pred)}
            if probs is not None:
                out["probabilities"] = _tolist(probs)
                if state.classes is not None:
                    out["classes"] = state.classes
            if want_explain:
                try:
                    out["explanations"], out["explainer"] = state.explain(instances)
                except BadRequest as exc:
                    return exc.status, _dumps({"error": f"explain: {exc}"}), None
                except Exception as exc:  # noqa: BLE001 - reported to the caller as a 500
                    error = f"explain failed: {type(exc).__name__}: {exc}"
                    return 500, _dumps({"error": error}), None
            out["model"] = state.name
            out["version"] = state.version
            return 200, _dumps(out), None

        finish.explains = want_explain
        return x, want_proba, finish

    # -- Open Inference Protocol (V2) ----------------------------------------

    async def _v2(self, method, path, scope, receive):
        if path in ("/v2", "/v2/"):
            if method not in ("GET", "HEAD"):
                return _method_not_allowed("GET, HEAD")
            return (
                200,
                _dumps({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []}),
                None,
            )
        if path == "/v2/health/live":
            if method not in ("GET", "HEAD"):
                return _method_not_allowed("GET, HEAD")
            return 200, b'{"live":true}', None
        if path == "/v2/health/ready":
            if method not in ("GET", "HEAD"):
                return _method_not_allowed("GET, HEAD")
            if self.state is None:
                return 503, b'{"ready":false}', None
            return 200, b'{"ready":true}', None
        if not path.startswith("/v2/models/"):
            raise BadRequest(f"not found: {path}", 404)
        parts = path[len("/v2/models/") :].rstrip("/").split("/")
        name, rest = parts[0], parts[1:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        action = rest[0] if len(rest) == 1 else ("" if not rest else None)
        if action not in ("", "ready", "infer"):
            raise BadRequest(f"not found: {path}", 404)
        state = self._ready_state()
        if name != state.name:
            raise BadRequest(f"unknown model {name!r}", 404)
        if version is not None and version != state.version_str:
            raise BadRequest(f"unknown version {version!r} of model {name!r}", 404)
        if action == "infer":
            if method != "POST":
                return _method_not_allowed("POST")
            return await self._compute(self._v2_infer, state, await self._read_body(scope, receive))
        if method not in ("GET", "HEAD"):
            return _method_not_allowed("GET, HEAD")
        if action == "ready":
            return 200, _dumps({"name": state.name, "ready": True}), None
        return 200, _dumps(_v2_metadata(state)), None

    def _v2_infer(self, state: ModelState, payload: dict):
        """POST .../infer: (input, wants predict_proba, finish)."""
        inputs = payload.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest('"inputs" must be a non-empty list of tensors')
        params = payload.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest('"parameters" must be an object')
        requested = payload.get("outputs")
        if requested is not None:
            if not isinstance(requested, list):
                raise BadRequest('"outputs" must be a list')
            names = []
            for item in requested:
                name = item.get("name") if isinstance(item, dict) else None
                if name not in ("predict", "predict_proba"):
                    raise BadRequest(f"unknown output {name!r}: predict or predict_proba")
                names.append(name)
            if "predict_proba" in names and not state.has_proba:
                raise BadRequest("this model has no predict_proba")
        else:
            names = ["predict"]
            if params.get("proba") and state.has_proba:
                names.append("predict_proba")
        instances = _tensors_to_instances(state, inputs)
        x = state.build_input(instances)

        def finish(pred, probs):
            outputs = []
            for name in names:
                arr = np.asarray(pred if name == "predict" else probs)
                outputs.append(
                    {
                        "name": name,
                        "shape": list(arr.shape),
                        "datatype": _dtype_name(arr),
                        "data": _tolist(arr.reshape(-1)),
                    }
                )
            out = {"model_name": state.name, "model_version": state.version_str}
            if "id" in payload:
                out["id"] = payload["id"]
            out["outputs"] = outputs
            return 200, _dumps(out), None

        return x, "predict_proba" in names, finish


def _predict_failed(exc: Exception):
    return 500, _dumps({"error": f"predict failed: {type(exc).__name__}: {exc}"}), None


def _method_not_allowed(allow: str):
    return (
        405,
        _dumps({"error": f"method not allowed; use {allow}"}),
        [(b"allow", allow.encode())],
    )


def _columns_to_records(columns: dict) -> list:
    lengths = set()
    for key, values in columns.items():
        if not isinstance(values, list):
            raise BadRequest(f"column {key!r} must be a list of values")
        lengths.add(len(values))
    if len(lengths) != 1:
        raise BadRequest("all columns must have the same number of values")
    keys = list(columns)
    return [dict(zip(keys, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _tensor_shape(tensor, i: int) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"input {i}: shape must be a list of non-negative integers")
    return shape


def _tensors_to_instances(state: ModelState, inputs: list) -> list:
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or "data" not in tensor:
            raise BadRequest(f"input {i}: a tensor needs name, shape, datatype and data")
    cols = state.columns or []
    # One tensor [N, F]: rows.
    if len(inputs) == 1:
        tensor = inputs[0]
        shape = _tensor_shape(tensor, 0)
        single_column = len(cols) == 1 and tensor.get("name") == cols[0]
        if len(shape) == 2:
            data = _flatten(tensor["data"])
            n, f = shape
            if len(data) != n * f:
                raise BadRequest(f"input 0: shape {shape} needs {n * f} values, got {len(data)}")
            return [data[r * f : (r + 1) * f] for r in range(n)]
        if len(shape) == 1 and not single_column:
            if state.n_features == 1 or state.n_features is None:
                data = _flatten(tensor["data"])
                return [[v] for v in data]
            raise BadRequest(
                f"input 0: shape {shape}: expected [N, {state.n_features}] "
                f"or one tensor per column {cols or ''}".rstrip()
            )
    # One tensor per column, shape [N] or [N, 1]: records.
    if not cols:
        raise BadRequest(
            "one tensor per column needs a model with column names; "
            f"send one tensor of shape [N, {state.n_features}]"
        )
    columns: dict = {}
    for i, tensor in enumerate(inputs):
        name = tensor.get("name")
        if name not in cols:
            raise BadRequest(f"input {i}: unknown column {name!r}; expected {cols}")
        shape = _tensor_shape(tensor, i)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise BadRequest(f"input {name!r}: shape must be [N] or [N, 1], got {shape}")
        data = _flatten(tensor["data"])
        if len(data) != shape[0]:
            raise BadRequest(f"input {name!r}: shape {shape} needs {shape[0]} values")
        columns[name] = data
    missing = [c for c in cols if c not in columns]
    if missing:
        raise BadRequest(f"missing input tensor(s) for column(s) {missing}")
    return _columns_to_records(columns)


def _v2_metadata(state: ModelState) -> dict:
    feature_type = "BYTES" if state.accepts_strings else "FP64"
    if state.columns:
        inputs = [{"name": c, "datatype": feature_type, "shape": [-1]} for c in state.columns]
    else:
        inputs = [
            {"name": "input-0", "datatype": feature_type, "shape": [-1, state.n_features or -1]}
        ]
    if state.classes is not None:
        outputs = [{"name": "predict", "datatype": _dtype_name(state.classes), "shape": [-1]}]
    else:
        outputs = [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    if state.has_proba:
        n_classes = len(state.classes) if state.classes is not None else -1
        outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, n_classes]})
    return {
        "name": state.name,
        "versions": [state.version_str],
        "platform": "sklearn",
        "inputs": inputs,
        "outputs": outputs,
    }


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------


def _version_value(raw):
    return int(raw) if isinstance(raw, str) and raw.isdigit() else raw


def make_state(cfg) -> ModelState:
    model = load_model(cfg.model, cfg.format, getattr(cfg, "key_file", None))
    return ModelState(model, cfg.name, _version_value(cfg.version), cfg.columns)


def _read_token(path: str | None) -> bytes:
    """The token file's content; a configured file that cannot be read stops the server."""
    if not path:
        return b""
    with open(path, "rb") as fh:
        token = fh.read().strip()
    if not token:
        raise SystemExit(f"the token file {path} is empty")
    return token


def _log(event: str, **fields):
    sys.stderr.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    started = time.perf_counter()
    try:
        state = make_state(cfg)
    except Exception as exc:  # noqa: BLE001 - a clear message and exit code, no traceback
        _log(
            "load_failed", model=cfg.model, format=cfg.format, error=f"{type(exc).__name__}: {exc}"
        )
        return 3
    load_ms = round((time.perf_counter() - started) * 1000, 1)
    app = App(state, cfg=cfg, access_log=cfg.access_log)

    import uvicorn

    # Bind only now that the model is loaded: an open port means ready.
    if cfg.uds:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cfg.uds)  # left by a previous run in the same directory
        try:
            sock.bind(cfg.uds)
        except OSError as exc:
            _log("bind_failed", uds=cfg.uds, error=str(exc))
            return 4
        where = {"uds": cfg.uds}
    else:
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError as exc:
            _log("bind_failed", host=cfg.host, port=cfg.port, error=str(exc))
            return 4
        where = {"host": cfg.host, "port": sock.getsockname()[1]}
    sock.listen(2048)
    sock.set_inheritable(True)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level=cfg.log_level,
        server_header=False,
        backlog=2048,
    )
    _log(
        "listening",
        **where,
        model=cfg.name,
        version=state.version,
        load_ms=load_ms,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _app_from_env() -> App:
    """For ``uvicorn server:app``: the model loads at lifespan startup."""
    return App(None, cfg=parse_config([]), access_log=os.environ.get("ACCESS_LOG") == "1")


def __getattr__(name):  # module attribute ``app`` built on first access
    if name == "app":
        app = _app_from_env()
        globals()["app"] = app
        return app
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
