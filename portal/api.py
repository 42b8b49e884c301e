"""API plumbing: one exception handler that maps domain errors to JSON 4xx answers."""

from __future__ import annotations

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from portal.errors import ApplicationError


def exception_handler(exc, context):
    if isinstance(exc, ApplicationError):
        body = {"error": exc.message, **exc.extra}
        return Response(body, status=exc.status_code)
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
