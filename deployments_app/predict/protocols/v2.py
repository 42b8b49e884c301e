"""Open Inference Protocol (KServe V2) REST codec, with Triton's binary tensor extension.

Pure functions from request bytes to checked rows and from a replica's answer to response
bytes, so the sync and asyncio drivers share them and `tritonclient.http` works unchanged in
both of its modes:

- JSON: the whole body is the JSON header; tensors carry `data` (flat or nested lists).
- binary (tritonclient's default): the `Inference-Header-Content-Length` request header gives
  the JSON header's length; the rest of the body is every input that has
  `parameters.binary_data_size`, concatenated in input order. Tensors are little-endian and
  row-major; BOOL is one byte per element; each BYTES element is a 4-byte little-endian
  length and then its bytes. tritonclient sends no Content-Type, so the framing header
  alone decides.

Outputs are answered in binary when the request asks for it per output
(`outputs[].parameters.binary_data`) or for all (`parameters.binary_data_output`, which
tritonclient sets when no outputs are named). A binary answer sends
`Inference-Header-Content-Length` and `application/octet-stream`, as Triton does.

Spec: https://github.com/kserve/open-inference-protocol (REST);
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployments_app.predict.inputs import InputError, ParsedInput, check_rows, wants_explain
from deployments_app.predict.protocols.encoding import EncodingError, decode_content
from portal import jsonlimits  # reads Django settings only for limits not given: all are

# The header is small and shallow: {"inputs": [{"data": [[...]]}]} nests four levels.
MAX_DEPTH = 32
# Values kept per tensor in the logged payload: enough to replay a batch of MAX_ROWS small
# rows, not a megabyte of floats per call.
PAYLOAD_MAX_VALUES = 10_000

OUTPUT_PREDICT = "predict"
OUTPUT_PROBA = "predict_proba"

# V2 datatype -> numpy little-endian dtype (None: BYTES, length-prefixed elements).
DATATYPES: dict[str, str | None] = {
    "BOOL": "|b1",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "BYTES": None,
}
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class V2Input(ParsedInput):
    """Rows for the replica plus what the answer must look like."""

    single: bool = False
    proba: bool = False
    id: str | None = None
    # (name, binary) per requested output, in request order; [] = every output the model has
    outputs: list[tuple[str, bool]] = field(default_factory=list)
    binary_default: bool = False  # parameters.binary_data_output
    payload: Any = None  # the request for the log: header JSON with binary data decoded


@dataclass
class _Tensor:
    name: str
    shape: list[int]
    datatype: str
    values: list[Any]


def _bad(message: str, status: int = 400) -> InputError:
    return InputError(message, status=status)


# --------------------------------------------------------------------------- request


def parse_infer(
    body: bytes, headers: Mapping[str, str], schema: dict[str, Any], *, max_bytes: int
) -> V2Input:
    """An infer request (raw body and its headers) -> checked rows; InputError otherwise."""
    headers = {k.lower(): v for k, v in headers.items()}  # dict(request.headers) is Title-Case
    try:
        data = decode_content(body, headers.get("content-encoding", ""), max_bytes)
    except EncodingError as exc:
        raise _bad(exc.message, exc.status) from exc
    header, binary = _split(data, headers.get("inference-header-content-length"))
    try:
        doc = jsonlimits.loads(header, max_bytes=max_bytes, max_depth=MAX_DEPTH)
    except jsonlimits.JSONLimitError as exc:
        raise _bad(f"the inference header is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _bad("the inference request must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    params = _parameters(doc, "the request")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise _bad("'parameters.binary_data_output' must be true or false")

    tensors = _tensors(doc.get("inputs"), binary)
    outputs = _requested_outputs(doc.get("outputs"), schema, binary_default)
    rows = _rows(tensors, schema)
    check_rows(rows, schema)

    names = [name for name, _ in outputs]
    explain = wants_explain(params, len(rows))
    proba = (
        OUTPUT_PROBA in names
        or bool(params.get("proba"))
        or (not outputs and bool(schema.get("has_predict_proba")))
    )
    return V2Input(
        rows=rows,
        single=False,
        proba=proba,
        id=request_id,
        outputs=outputs,
        binary_default=binary_default,
        payload=_payload(doc, tensors),
        explain=explain,
    )


def _split(data: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return data, b""
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):
        raise _bad(f"Inference-Header-Content-Length must be a byte count, got {header_length!r}")
    n = int(text)
    if n == 0 or n > len(data):
        raise _bad(f"Inference-Header-Content-Length is {n} but the body has {len(data)} bytes")
    return data[:n], data[n:]


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _bad(f"'parameters' of {where} must be an object")
    return params


def _tensors(inputs: Any, binary: bytes) -> list[_Tensor]:
    if not isinstance(inputs, list) or not inputs:
        raise _bad("a V2 request needs a non-empty 'inputs' list of tensors")
    tensors: list[_Tensor] = []
    seen: set[str] = set()
    offset = 0
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise _bad(f"input {i} must be an object with 'name', 'shape' and 'datatype'")
        name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
        if not isinstance(name, str) or not name:
            raise _bad(f"input {i} needs a 'name'")
        if name in seen:
            raise _bad(f"input '{name}' is given twice")
        seen.add(name)
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _bad(f"input '{name}': 'shape' must be a list of non-negative integers")
        if datatype not in DATATYPES:
            raise _bad(
                f"input '{name}': unsupported datatype {datatype!r}; "
                f"use one of {', '.join(DATATYPES)}"
            )
        params = _parameters(spec, f"input '{name}'")
        if "shared_memory_region" in params:
            raise _bad(f"input '{name}': shared memory is not supported; send the data")
        count = math.prod(shape)
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _bad(f"input '{name}': 'binary_data_size' must be a non-negative integer")
            if "data" in spec:
                raise _bad(f"input '{name}' has both 'data' and 'binary_data_size'")
            if offset + size > len(binary):
                raise _bad(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left)"
                )
            values = _from_binary(name, datatype, binary[offset : offset + size], count)
            offset += size
        elif "data" in spec:
            values = _from_json(name, datatype, spec["data"])
        else:
            raise _bad(f"input '{name}' needs 'data' or 'parameters.binary_data_size'")
        if len(values) != count:
            raise _bad(f"input '{name}': shape {shape} holds {count} values, got {len(values)}")
        tensors.append(_Tensor(name, shape, datatype, values))
    if offset != len(binary):
        raise _bad(
            f"the binary data sizes add up to {offset} bytes but {len(binary)} bytes follow "
            "the inference header"
        )
    return tensors


def _from_binary(name: str, datatype: str, raw: bytes, count: int) -> list[Any]:
    dtype = DATATYPES[datatype]
    if dtype is None:
        return _bytes_elements(name, raw)
    width = np.dtype(dtype).itemsize
    if len(raw) != count * width:
        raise _bad(
            f"input '{name}': {count} {datatype} values take {count * width} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    if datatype == "BOOL":
        octets = np.frombuffer(raw, dtype="<u1")
        if octets.size and int(octets.max()) > 1:
            raise _bad(f"input '{name}': BOOL bytes must be 0 or 1")
        return octets.astype(bool).tolist()
    return np.frombuffer(raw, dtype=dtype).tolist()


def _bytes_elements(name: str, raw: bytes) -> list[str]:
    values = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise _bad(f"input '{name}': a BYTES element's 4-byte length is cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > end:
            raise _bad(f"input '{name}': a BYTES element of {length} bytes runs past its data")
        try:
            values.append(raw[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _bad(
                f"input '{name}': element {len(values)} is not UTF-8 text: {exc.reason}"
            ) from exc
        offset += length
    return values


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    for v in data:
        flat.extend(_flatten(v))
    return flat


def _from_json(name: str, datatype: str, data: Any) -> list[Any]:
    values = _flatten(data)
    dtype = DATATYPES[datatype]
    if dtype is None:
        expected, ok = "strings", all(isinstance(v, str) for v in values)
    elif datatype == "BOOL":
        expected, ok = "true/false", all(isinstance(v, bool) for v in values)
    elif datatype.startswith("FP"):
        expected = "numbers"
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    else:
        info = np.iinfo(dtype)
        lo, hi = int(info.min), int(info.max)
        expected = f"integers in [{lo}, {hi}]"
        ok = all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in values)
    if not ok:
        raise _bad(f"input '{name}': {datatype} data must be {expected}")
    return values


def _rows(tensors: list[_Tensor], schema: dict[str, Any]) -> list[list[Any]]:
    """One [N, F] tensor (or [N] for one feature or text), or one [N]/[N, 1] tensor per column."""
    columns = schema.get("columns")
    if len(tensors) == 1 and not (columns and tensors[0].name in columns):
        return _matrix_rows(tensors[0], schema)
    if not columns:
        raise _bad("this model takes one [N, F] tensor, not named column tensors", status=422)
    by_name = {t.name: t for t in tensors}
    missing = [c for c in columns if c not in by_name]
    if missing:
        raise InputError(
            f"missing input tensor(s): {', '.join(missing)}", status=422, field=missing[0]
        )
    unknown = [t.name for t in tensors if t.name not in columns]
    if unknown:
        raise InputError(
            f"unknown input tensor(s): {', '.join(unknown)}; the model's columns are "
            f"{', '.join(columns)}",
            status=422,
            field=unknown[0],
        )
    series = []
    for c in columns:
        t = by_name[c]
        if not (len(t.shape) == 1 or (len(t.shape) == 2 and t.shape[1] == 1)):
            raise InputError(
                f"column tensor '{c}' must have shape [N] or [N, 1], got {t.shape}",
                status=422,
                field=c,
            )
        series.append(t.values)
    if len({len(s) for s in series}) != 1:
        raise _bad("all column tensors must have the same length", status=422)
    return [list(r) for r in zip(*series, strict=True)]


def _matrix_rows(t: _Tensor, schema: dict[str, Any]) -> list[list[Any]]:
    n_features = schema.get("n_features")
    if len(t.shape) == 2:
        width = t.shape[1]
        return [t.values[i * width : (i + 1) * width] for i in range(t.shape[0])]
    if len(t.shape) == 1:
        if schema.get("text_input") or n_features in (None, 1):
            return [[v] for v in t.values]
        raise _bad(
            f"input '{t.name}' has shape {t.shape}: this model takes {n_features} features, "
            f"send shape [N, {n_features}]",
            status=422,
        )
    raise _bad(f"input '{t.name}' must have shape [N, F], got {t.shape}", status=422)


def _known_outputs(schema: dict[str, Any]) -> list[str]:
    return [OUTPUT_PREDICT, OUTPUT_PROBA] if schema.get("has_predict_proba") else [OUTPUT_PREDICT]


def _requested_outputs(
    outputs: Any, schema: dict[str, Any], binary_default: bool
) -> list[tuple[str, bool]]:
    if outputs is None:
        return []
    if not isinstance(outputs, list):
        raise _bad("'outputs' must be a list")
    known = _known_outputs(schema)
    requested: list[tuple[str, bool]] = []
    for i, spec in enumerate(outputs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise _bad(f"output {i} needs a 'name'")
        if name not in known:
            raise _bad(f"unknown output '{name}'; this model has: {', '.join(known)}")
        if any(name == n for n, _ in requested):
            raise _bad(f"output '{name}' is requested twice")
        params = _parameters(spec, f"output '{name}'")
        if params.get("classification"):
            raise _bad(f"output '{name}': the classification extension is not supported")
        if "shared_memory_region" in params:
            raise _bad(f"output '{name}': shared memory is not supported")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise _bad(f"output '{name}': 'binary_data' must be true or false")
        requested.append((name, binary))
    return requested


def _payload(doc: dict[str, Any], tensors: list[_Tensor]) -> dict[str, Any]:
    record = {k: v for k, v in doc.items() if k != "inputs"}
    record["inputs"] = []
    for t in tensors:
        entry: dict[str, Any] = {"name": t.name, "shape": t.shape, "datatype": t.datatype}
        entry["data"] = t.values[:PAYLOAD_MAX_VALUES]
        if len(t.values) > PAYLOAD_MAX_VALUES:
            entry["truncated"] = True
        record["inputs"].append(entry)
    return record


# --------------------------------------------------------------------------- response


def render_infer(
    model_name: str,
    model_version: str,
    request_id: str,
    parsed: V2Input,
    upstream: dict[str, Any],
) -> tuple[bytes, dict[str, str]]:
    """The replica's answer as a V2 response: (body, headers incl. Content-Type).

    An output the replica did not produce (predict_proba without probabilities) is left out.
    """
    predictions = list(upstream.get("predictions") or [])
    probabilities = upstream.get("probabilities")
    tensors: dict[str, tuple[list[int], str, list[Any]]] = {
        OUTPUT_PREDICT: ([len(predictions)], _datatype(predictions), predictions)
    }
    if probabilities is not None:
        width = len(probabilities[0]) if probabilities else 0
        flat = [float(v) for row in probabilities for v in row]
        tensors[OUTPUT_PROBA] = ([len(probabilities), width], "FP64", flat)
    wanted = parsed.outputs or [(name, parsed.binary_default) for name in tensors]

    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in wanted:
        if name not in tensors:
            continue
        shape, datatype, values = tensors[name]
        output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            raw = _to_binary(datatype, values)
            output["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            output["data"] = [str(v) for v in values] if datatype == "BYTES" else values
        outputs.append(output)
    document: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "id": parsed.id or request_id,
    }
    if "explanations" in upstream:  # asked with parameters.explain: response parameters
        document["parameters"] = {
            "explanations": upstream["explanations"],
            "explainer": upstream.get("explainer"),
        }
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def _datatype(values: list[Any]) -> str:
    if values and all(isinstance(v, bool) for v in values):
        return "BOOL"
    if values and all(
        isinstance(v, int) and not isinstance(v, bool) and _INT64[0] <= v <= _INT64[1]
        for v in values
    ):
        return "INT64"
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "FP64"
    return "BYTES"


def _to_binary(datatype: str, values: list[Any]) -> bytes:
    dtype = DATATYPES[datatype]
    if dtype is not None:
        return np.asarray(values, dtype=dtype).tobytes()
    parts = []
    for v in values:
        raw = v.encode("utf-8") if isinstance(v, str) else str(v).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def error_body(message: str) -> bytes:
    """The V2 error answer (tritonclient reads `error` from any non-200 body)."""
    return json.dumps({"error": message}).encode()


# --------------------------------------------------------------------------- metadata


def model_metadata(name: str, versions: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    """GET /v2/models/<name>: the tensors `parse_infer` accepts and `render_infer` answers."""
    columns = schema.get("columns")
    types = schema.get("column_types") or {}
    if columns:
        inputs = [
            {
                "name": c,
                "datatype": "BYTES" if types.get(c) == "string" else "FP64",
                "shape": [-1, 1],
            }
            for c in columns
        ]
    elif schema.get("text_input"):
        inputs = [{"name": "input-0", "datatype": "BYTES", "shape": [-1]}]
    else:
        inputs = [
            {"name": "input-0", "datatype": "FP64", "shape": [-1, schema.get("n_features") or -1]}
        ]
    classes = schema.get("classes")
    predict_type = _datatype(list(classes)) if classes else "FP64"
    outputs = [{"name": OUTPUT_PREDICT, "datatype": predict_type, "shape": [-1]}]
    if schema.get("has_predict_proba"):
        width = len(classes) if classes else -1
        outputs.append({"name": OUTPUT_PROBA, "datatype": "FP64", "shape": [-1, width]})
    return {
        "name": name,
        "versions": versions,
        "platform": "sklearn",
        "inputs": inputs,
        "outputs": outputs,
    }


def server_metadata(version: str) -> dict[str, Any]:
    """GET /v2: who answers and which protocol extensions it speaks."""
    return {"name": "model-portal", "version": version, "extensions": ["binary_tensor_data"]}
