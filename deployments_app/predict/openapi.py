"""The prediction endpoints in the OpenAPI schema.

They are plain Django views (the hot path skips DRF), so drf-spectacular cannot see them;
this post-processing hook describes them, so docs, clients and the fuzzer know them too.
"""

from __future__ import annotations

from typing import Any

_ROWS = {"type": "array", "items": {"type": "array", "items": {}}, "minItems": 1}
_RECORDS = {"type": "array", "items": {"type": "object"}, "minItems": 1}
_PARAMS = {
    "type": "object",
    "properties": {
        "proba": {"type": "boolean"},
        "explain": {
            "type": "boolean",
            "description": "per-row feature contributions and base value (at most 20 rows; "
            "its own rate limit, PORTAL_EXPLAIN_RATE_PER_MINUTE)",
        },
    },
}
_ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "row": {"type": "integer"},
        "field": {},
        "request_id": {"type": "string"},
    },
    "required": ["error"],
}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "deployment name",
}
_SECURITY = [{"apiKey": []}, {"cookieAuth": []}, {"basicAuth": []}]
_ERRORS = {
    str(code): {"description": text, "content": {"application/json": {"schema": _ERROR}}}
    for code, text in [
        (400, "malformed body"),
        (401, "missing or invalid API key"),
        (403, "role may not predict"),
        (404, "no such deployment"),
        (413, "body or batch too large"),
        (415, "not JSON"),
        (422, "input does not match the model's schema"),
        (429, "rate limit; see Retry-After"),
        (502, "the model failed"),
        (503, "not running / no replica"),
        (504, "the model timed out"),
    ]
}

PREDICT_BODY = {
    "oneOf": [
        {
            "type": "object",
            "title": "features",
            "required": ["features"],
            "properties": {
                "features": {"oneOf": [{"type": "array"}, {"type": "object"}]},
                "params": _PARAMS,
            },
        },
        {
            "type": "object",
            "title": "instances",
            "required": ["instances"],
            "properties": {"instances": {"oneOf": [_ROWS, _RECORDS]}, "params": _PARAMS},
        },
        {
            "type": "object",
            "title": "dataframe_split",
            "required": ["dataframe_split"],
            "properties": {
                "dataframe_split": {
                    "type": "object",
                    "properties": {
                        "columns": {"type": "array", "items": {"type": "string"}},
                        "data": _ROWS,
                    },
                    "required": ["data"],
                },
                "params": _PARAMS,
            },
        },
        {
            "type": "object",
            "title": "dataframe_records",
            "required": ["dataframe_records"],
            "properties": {"dataframe_records": _RECORDS, "params": _PARAMS},
        },
        {
            "type": "object",
            "title": "inputs",
            "required": ["inputs"],
            "properties": {"inputs": {"oneOf": [_ROWS, {"type": "object"}]}, "params": _PARAMS},
        },
        {"title": "records", **_RECORDS},
    ]
}
PREDICT_OUT = {
    "type": "object",
    "properties": {
        "prediction": {},
        "predictions": {"type": "array"},
        "probabilities": {"type": "array"},
        "classes": {"type": "array"},
        "explanations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "base_value": {"type": "number"},
                    "output": {"type": "number"},
                    "class": {},
                    "contributions": {
                        "type": "object",
                        "additionalProperties": {"type": "number"},
                    },
                },
            },
        },
        "explainer": {"type": "object"},
        "deployment": {"type": "string"},
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "request_id": {"type": "string"},
    },
}
V2_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"},
        "data": {"type": "array"},
    },
}


V2_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": V2_TENSOR},
        "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": {"type": "object"}},
    },
}
V1_BODY = {
    "type": "object",
    "required": ["instances"],
    "properties": {"instances": {"oneOf": [_ROWS, _RECORDS]}},
}
PREDICTIONS = {"type": "object", "properties": {"predictions": {"type": "array"}}}
MLFLOW_ERROR = {
    "type": "object",
    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
    "description": "model version number",
}
_V2_ERRORS = {
    code: {**answer, "content": {"application/json": {"schema": {"type": "object"}}}}
    for code, answer in _ERRORS.items()
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(
    operation_id: str,
    tag: str,
    summary: str,
    *,
    body: dict[str, Any] | None = None,
    answer: dict[str, Any] | None = None,
    errors: dict[str, Any] | None = None,
    version: bool = False,
    public: bool = False,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "responses": {
            "200": {"description": "OK", **_json(answer or {"type": "object"})},
            **(errors if errors is not None else _ERRORS),
        },
        "security": [] if public else _SECURITY,
    }
    if not public:
        operation["parameters"] = [_NAME, _VERSION] if version else [_NAME]
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    return operation


def add_prediction_paths(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """Every route of deployments_app/predict/urls.py (a test checks that none is missing)."""
    portal_body = _json(PREDICT_BODY)["content"]
    mlflow_body = {
        **_json({"oneOf": PREDICT_BODY["oneOf"][1:5]})["content"],
        "text/csv": {"schema": {"type": "string"}},
    }
    v2_body = {
        **_json(V2_REQUEST)["content"],
        # tritonclient's binary framing: JSON header (Inference-Header-Content-Length bytes),
        # then the tensors; sent with no Content-Type at all.
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }
    mlflow_errors = {code: {**a, **_json(MLFLOW_ERROR)} for code, a in _ERRORS.items()}
    paths = result.setdefault("paths", {})
    deployment = "/api/v1/deployments/{name}"
    paths[f"{deployment}/predict"] = {
        "post": _op(
            "predict",
            "predict",
            "Predict with a running deployment",
            body=portal_body,
            answer=PREDICT_OUT,
        )
    }
    paths[f"{deployment}/versions/{{version}}/predict"] = {
        "post": _op(
            "predict_version",
            "predict",
            "Predict with one version of a deployment (404 when it does not serve it)",
            body=portal_body,
            answer=PREDICT_OUT,
            version=True,
        )
    }
    paths[f"{deployment}/invocations"] = {
        "post": _op(
            "mlflow_invocations",
            "mlflow",
            "MLflow scoring protocol (as `mlflow models serve`)",
            body=mlflow_body,
            answer=PREDICTIONS,
            errors=mlflow_errors,
        )
    }
    paths[f"{deployment}/ping"] = {
        "get": _op("mlflow_ping", "mlflow", "MLflow scoring server health (200 when serving)")
    }
    paths["/v1/models/{name}:predict"] = {
        "post": _op(
            "v1_predict",
            "kserve-v1",
            "KServe V1 predict",
            body=_json(V1_BODY)["content"],
            answer=PREDICTIONS,
        )  # fmt: skip
    }
    paths["/v1/models/{name}"] = {"get": _op("v1_model", "kserve-v1", "KServe V1 readiness")}
    for prefix, pinned in (
        ("/v2/models/{name}", False),
        ("/v2/models/{name}/versions/{version}", True),
    ):
        suffix = "_version" if pinned else ""
        paths[f"{prefix}/infer"] = {
            "post": _op(
                f"v2_infer{suffix}",
                "open-inference",
                "Open Inference Protocol (KServe V2) inference, JSON or binary tensors",
                body=v2_body,
                errors=_V2_ERRORS,
                version=pinned,
            )  # fmt: skip
        }
        paths[prefix] = {
            "get": _op(
                f"v2_model_metadata{suffix}",
                "open-inference",
                "Model metadata",
                errors=_V2_ERRORS,
                version=pinned,
            )  # fmt: skip
        }
        paths[f"{prefix}/ready"] = {
            "get": _op(
                f"v2_model_ready{suffix}",
                "open-inference",
                "Model readiness",
                errors=_V2_ERRORS,
                version=pinned,
            )  # fmt: skip
        }
    for path, operation_id, summary in (
        ("/v2", "v2_server_metadata", "Server metadata (extensions: binary_tensor_data)"),
        ("/v2/health/ready", "v2_ready", "Server readiness"),
        ("/v2/health/live", "v2_live", "Server liveness"),
    ):
        paths[path] = {"get": _op(operation_id, "open-inference", summary, public=True)}
    schemes = result.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key from /keys/ or /api/v1/keys",
    }
    return result
