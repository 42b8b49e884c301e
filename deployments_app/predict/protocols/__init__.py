"""The dialects the prediction API speaks: how a body is parsed, how an answer is shaped.

A protocol knows nothing of keys, targets, replicas or the log (that is the pipeline's);
it turns bytes into checked rows for a version's schema, and the replica's answer (or a
refusal) into bytes. One instance of each serves every call:

    portal   POST /api/v1/deployments/<name>/predict (and .../versions/<v>/predict)
    mlflow   POST /api/v1/deployments/<name>/invocations (MLflow's scoring protocol)
    v1       POST /v1/models/<name>:predict (KServe V1 / TF Serving)
    v2       POST /v2/models/<name>[/versions/<v>]/infer (Open Inference Protocol, binary too)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings
from django.utils.http import parse_header_parameters

from deployments_app.predict.inputs import InputError, ParsedInput, parse_body
from portal import jsonlimits

if TYPE_CHECKING:
    from deployments_app.predict.pipeline import Call


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    shadow: Any = None  # a shadow.Copy the driver hands over once the answer is sent


def json_answer(status: int, document: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(
        status,
        json.dumps(document).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def explanations(upstream: dict[str, Any]) -> dict[str, Any]:
    """The replica's explanations (asked for with "explain"), as every JSON dialect adds them."""
    if "explanations" not in upstream:
        return {}
    return {"explanations": upstream["explanations"], "explainer": upstream.get("explainer")}


def read_json(body: bytes, headers: Mapping[str, str], *, accept: tuple[str, ...] = ()) -> Any:
    """The JSON document of a body: 415 unless it is declared JSON (or one of `accept`),
    400 when it is malformed or nested too deeply (PORTAL_JSON_MAX_DEPTH)."""
    content_type, _ = parse_header_parameters(headers.get("content-type", ""))
    if content_type != "application/json" and content_type not in accept:
        wanted = " or ".join(("application/json", *accept))
        raise InputError(
            f"send JSON (Content-Type: {wanted}), not '{content_type or 'nothing'}'", status=415
        )
    try:
        return jsonlimits.loads(body, max_bytes=settings.PORTAL_PREDICT_MAX_BODY_BYTES)
    except jsonlimits.JSONLimitError as exc:
        raise InputError(str(exc), status=400) from exc


class Protocol:
    """One dialect. `parse` raises InputError (status and body) for what it cannot take."""

    name: ClassVar[str]

    def parse(self, body: bytes, headers: Mapping[str, str], schema: dict[str, Any]) -> ParsedInput:
        raise NotImplementedError

    def render(self, call: Call, upstream: dict[str, Any], parsed: ParsedInput) -> Answer:
        raise NotImplementedError

    def error(
        self, request_id: str, status: int, body: dict[str, Any], headers: dict[str, str]
    ) -> Answer:
        return json_answer(status, body, headers)


class PortalProtocol(Protocol):
    """The portal's own JSON: any body `inputs.parse_body` accepts; the answer names the
    deployment, model and version, with probabilities when asked for."""

    name = "portal"

    def parse(self, body, headers, schema):
        document = read_json(body, headers)
        parsed = parse_body(document, schema)
        parsed.payload = document
        return parsed

    def render(self, call, upstream, parsed):
        target = call.target
        answer: dict[str, Any] = {
            "deployment": target.name,
            "model": target.model_name,
            "version": call.version,
        }
        predictions = upstream.get("predictions", [])
        if parsed.single:
            answer["prediction"] = predictions[0] if predictions else None
        answer["predictions"] = predictions
        if "probabilities" in upstream:
            answer["probabilities"] = upstream["probabilities"]
            if upstream.get("classes") is not None:
                answer["classes"] = upstream["classes"]
        answer.update(explanations(upstream))
        answer["request_id"] = call.request.request_id
        return json_answer(200, answer)

    def error(self, request_id, status, body, headers):
        return json_answer(status, {**body, "request_id": request_id}, headers)


class KServeV1Protocol(Protocol):
    """KServe V1 (the TF Serving REST shape): {"instances": [...]} -> {"predictions": [...]};
    "params" (or "parameters"): {"explain": true} adds "explanations"."""

    name = "v1"

    def parse(self, body, headers, schema):
        document = read_json(body, headers)
        if not isinstance(document, dict) or "instances" not in document:
            raise InputError("a V1 request is an object with 'instances'", status=400)
        params = document.get("params", document.get("parameters"))
        body = {"instances": document["instances"]}
        parsed = parse_body(body if params is None else {**body, "params": params}, schema)
        parsed.payload = document
        return parsed

    def render(self, call, upstream, parsed):
        predictions = upstream.get("predictions", [])
        return json_answer(200, {"predictions": predictions, **explanations(upstream)})


from deployments_app.predict.protocols.mlflow import MLflowProtocol  # noqa: E402
from deployments_app.predict.protocols.open_inference import OpenInferenceProtocol  # noqa: E402

PORTAL = PortalProtocol()
KSERVE_V1 = KServeV1Protocol()
MLFLOW = MLflowProtocol()
V2 = OpenInferenceProtocol()
