"""The edge bundle endpoint (GET /api/v1/models/<name>/versions/<v>/bundle). It lives here,
not in models_app/api, because a bundle is made of the deployment side's server and
runtimes (imports point deployments_app -> models_app)."""

from __future__ import annotations

from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework.views import APIView

from deployments_app.bundles import model_version_bundle
from deployments_app.onnx_bundle import model_version_onnx_bundle
from models_app import selectors
from portal.audit import Actor
from portal.errors import ApplicationError
from portal.permissions import HasCapability

FLAVORS = ("sklearn", "onnx")
FLAG_VALUES = {"": False, "0": False, "false": False, "1": True, "true": True}


def _flag(request, name: str) -> bool:
    value = request.query_params.get(name, "").strip().lower()
    if value not in FLAG_VALUES:
        raise ApplicationError(f"{name} must be 1 or 0 (true or false), not {value[:40]!r}")
    return FLAG_VALUES[value]


class VersionBundleApi(APIView):
    permission_classes = [HasCapability("view")]

    @extend_schema(responses={(200, "application/gzip"): bytes, 409: None, 404: None})
    def get(self, request, name: str, number: int):
        version = selectors.version_get(model_name=name, number=number)
        wheels = _flag(request, "wheels")
        flavor = request.query_params.get("flavor", "sklearn").strip().lower() or "sklearn"
        if flavor not in FLAVORS:
            raise ApplicationError(
                f"flavor must be one of {', '.join(FLAVORS)}, not {flavor[:40]!r}"
            )
        make = model_version_onnx_bundle if flavor == "onnx" else model_version_bundle
        out = make(version=version, actor=Actor.from_request(request), wheels=wheels)
        suffix = "-onnx" if flavor == "onnx" else ""
        return FileResponse(
            out,
            as_attachment=True,
            filename=f"{version.model.name}-v{version.number}{suffix}-bundle.tar.gz",
            content_type="application/gzip",
        )
