"""The prediction endpoints in the OpenAPI schema.

They are plain Django views (the hot path skips DRF), so drf-spectacular cannot see them;
this post-processing hook describes them, so docs, clients and the fuzzer know them too.
"""

from __future__ import annotations

from typing import Any

_ROWS = {"type": "array", "items": {"type": "array", "items": {}}, "minItems": 1}
_RECORDS = {"type": "array", "items": {"type": "object"}, "minItems": 1}
_PARAMS = {"type": "object", "properties": {"proba": {"type": "boolean"}}}
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


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def add_prediction_paths(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    paths = result.setdefault("paths", {})
    paths["/api/v1/deployments/{name}/predict"] = {
        "post": {
            "operationId": "predict",
            "tags": ["predict"],
            "parameters": [_NAME],
            "summary": "Predict with a running deployment",
            "requestBody": {"required": True, **_json(PREDICT_BODY)},
            "responses": {"200": {"description": "predictions", **_json(PREDICT_OUT)}, **_ERRORS},
            "security": _SECURITY,
        }
    }
    paths["/v2/models/{name}/infer"] = {
        "post": {
            "operationId": "v2_infer",
            "tags": ["open-inference"],
            "parameters": [_NAME],
            "summary": "Open Inference Protocol (KServe V2) inference",
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["inputs"],
                        "properties": {
                            "id": {"type": "string"},
                            "inputs": {"type": "array", "items": V2_TENSOR},
                            "parameters": {"type": "object"},
                            "outputs": {"type": "array"},
                        },
                    }
                ),
            },
            "responses": {
                "200": {"description": "outputs", **_json({"type": "object"})},
                **_ERRORS,
            },
            "security": _SECURITY,
        }
    }
    paths["/v2/models/{name}"] = {
        "get": {
            "operationId": "v2_model_metadata",
            "tags": ["open-inference"],
            "parameters": [_NAME],
            "responses": {
                "200": {"description": "model metadata", **_json({"type": "object"})},
                **_ERRORS,
            },
            "security": _SECURITY,
        }
    }
    paths["/v2/models/{name}/ready"] = {
        "get": {
            "operationId": "v2_model_ready",
            "tags": ["open-inference"],
            "parameters": [_NAME],
            "responses": {"200": {"description": "ready"}, **_ERRORS},
            "security": _SECURITY,
        }
    }
    paths["/v2/health/ready"] = {
        "get": {
            "operationId": "v2_ready",
            "tags": ["open-inference"],
            "responses": {"200": {"description": "ready"}},
            "security": [],
        }
    }
    schemes = result.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key from /keys/ or /api/v1/keys",
    }
    return result
