"""API plumbing: the bounded JSON parser, and one exception handler that maps domain errors
(and refused request data) to JSON 4xx answers."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from portal import jsonlimits
from portal.errors import ApplicationError


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser through portal.jsonlimits: at most PORTAL_JSON_MAX_BYTES are read
    (413 past them), nesting past PORTAL_JSON_MAX_DEPTH or malformed text is a 400."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.PORTAL_JSON_MAX_BYTES
        data = stream.read(limit + 1) if stream is not None else b""
        if len(data) > limit:
            raise BodyTooLarge(f"the JSON body is larger than {limit} bytes")
        try:
            return jsonlimits.loads(data, max_bytes=limit)
        except jsonlimits.JSONLimitError as exc:
            raise exceptions.ParseError(str(exc)) from exc


class BodyTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "the request body is too large"
    default_code = "too_large"


def exception_handler(exc, context):
    if isinstance(exc, ApplicationError):
        body = {"error": exc.message, **exc.extra}
        return Response(body, status=exc.status_code)
    if isinstance(exc, RequestDataTooBig):
        exc = BodyTooLarge(str(exc))
    elif isinstance(exc, SuspiciousOperation):  # too many fields, a malformed multipart body
        exc = exceptions.ParseError(str(exc))
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        response.data = {
            "error": str(response.data["detail"]),
            **{k: v for k, v in response.data.items() if k != "detail"},
        }
    elif response is not None and isinstance(response.data, dict | list):
        response.data = {"error": "invalid input", "fields": response.data}
    if response is not None:
        request = context.get("request")
        if request is not None and getattr(request, "request_id", None):
            response.data["request_id"] = request.request_id
    return response
