"""The Open Inference Protocol (KServe V2, Triton's HTTP API) as a pipeline protocol; the
codec, binary tensor data included, is `protocols.v2`."""

from __future__ import annotations

from django.conf import settings

from deployments_app.predict.protocols import Answer, Protocol, json_answer, v2


class OpenInferenceProtocol(Protocol):
    """Never requires a Content-Type: the framing is `Inference-Header-Content-Length`."""

    name = "v2"

    def parse(self, body, headers, schema):
        return v2.parse_infer(
            body, headers, schema, max_bytes=settings.PORTAL_PREDICT_MAX_BODY_BYTES
        )

    def render(self, call, upstream, parsed):
        body, headers = v2.render_infer(
            call.target.name, str(call.version), call.request.request_id, parsed, upstream
        )
        return Answer(200, body, headers)

    def error(self, request_id, status, body, headers):
        return json_answer(status, {"error": body.get("error", "")}, headers)
