"""Monitoring API: a deployment's capture policy (GET/PUT), the export of its captured
records, its drift scores, and a version's drift reference dataset."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from deployments_app import selectors
from deployments_app.models import DriftReference
from deployments_app.monitoring import drift
from deployments_app.monitoring import services as monitoring
from models_app import selectors as model_selectors
from portal.audit import Actor
from portal.errors import NotFoundError
from portal.permissions import HasCapability

CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


class CapturePolicySerializer(serializers.Serializer):
    percent = serializers.IntegerField(min_value=0, max_value=100)
    inputs = serializers.BooleanField(default=True)
    outputs = serializers.BooleanField(default=True)
    fields = serializers.JSONField(
        default=dict,
        help_text='{"column or /index": "keep|drop|mask|hash|truncate" or '
        '{"action": "truncate", "length": 8}}',
    )
    retention_days = serializers.IntegerField(min_value=1, required=False)


class CapturePolicyOutSerializer(CapturePolicySerializer):
    version = serializers.IntegerField()
    updated_at = serializers.DateTimeField(allow_null=True)


class DeploymentCaptureApi(APIView):
    """GET: the capture policy. PUT: set it (a new policy version when the rules change)."""

    permission_classes = [HasCapability("view", write="deploy")]

    @extend_schema(responses=CapturePolicyOutSerializer)
    def get(self, request, name: str):
        deployment = selectors.deployment_get(name=name)
        return Response(monitoring.capture_policy_get(deployment=deployment))

    @extend_schema(request=CapturePolicySerializer, responses=CapturePolicyOutSerializer)
    def put(self, request, name: str):
        serializer = CapturePolicySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        policy = monitoring.capture_policy_set(
            deployment=selectors.deployment_get(name=name),
            actor=Actor.from_request(request),
            **serializer.validated_data,
        )
        return Response(policy)


class ExportQuerySerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=monitoring.EXPORT_FORMATS, default="jsonl")
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)


def export_response(*, deployment, actor: Actor, fmt: str, since=None, until=None):
    """The streamed export (shared by the API and the page's link)."""
    lines = monitoring.capture_export(
        deployment=deployment, actor=actor, fmt=fmt, since=since, until=until
    )
    response = StreamingHttpResponse(lines, content_type=CONTENT_TYPES[fmt])
    response["Content-Disposition"] = f'attachment; filename="{deployment.name}-capture.{fmt}"'
    return response


class _FormatIsOurs(DefaultContentNegotiation):
    """`?format=csv|jsonl` names the export's format here, not one of DRF's renderers."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class DeploymentCaptureExportApi(APIView):
    """The captured records as CSV (a line per row) or JSON Lines (a line per call).
    Captured data may be sensitive: deployers and admins only; every export is audited."""

    permission_classes = [HasCapability("deploy")]
    content_negotiation_class = _FormatIsOurs

    @extend_schema(parameters=[ExportQuerySerializer], responses={200: str})
    def get(self, request, name: str):
        query = ExportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        return export_response(
            deployment=selectors.deployment_get(name=name),
            actor=Actor.from_request(request),
            fmt=data["format"],
            since=data.get("since"),
            until=data.get("until"),
        )


class DriftQuerySerializer(serializers.Serializer):
    points = serializers.IntegerField(
        min_value=1, max_value=500, default=drift.HISTORY_POINTS, help_text="history per feature"
    )


class DeploymentDriftApi(APIView):
    """The latest drift window per feature (worst first) and the worst feature."""

    permission_classes = [HasCapability("view")]

    @extend_schema(parameters=[DriftQuerySerializer], responses={200: dict})
    def get(self, request, name: str):
        query = DriftQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        deployment = selectors.deployment_get(name=name)
        latest = drift.latest_drift(deployment)
        return Response(
            {
                "deployment": deployment.name,
                "worst": list(latest["worst"]) if latest.get("worst") else None,
                "features": drift.drift_table(deployment, points=query.validated_data["points"]),
            }
        )


class DriftReferenceOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = DriftReference
        fields = ["source", "sha256", "filename", "size", "rows", "created_at"]


class DriftReferenceUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="CSV with a header row (the schema's columns)")


class VersionDriftReferenceApi(APIView):
    """GET: the version's drift reference. POST: upload a reference dataset (CSV)."""

    permission_classes = [HasCapability("view", write="upload")]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(responses=DriftReferenceOutSerializer)
    def get(self, request, name: str, number: int):
        version = model_selectors.version_get(model_name=name, number=number)
        reference = monitoring.drift_reference_get(version=version)
        if reference is None:
            raise NotFoundError("this version has no drift reference (no input example)")
        return Response(DriftReferenceOutSerializer(reference).data)

    @extend_schema(
        request={"multipart/form-data": DriftReferenceUploadSerializer},
        responses={201: DriftReferenceOutSerializer},
    )
    def post(self, request, name: str, number: int):
        serializer = DriftReferenceUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        reference = monitoring.drift_reference_upload(
            version=model_selectors.version_get(model_name=name, number=number),
            chunks=upload.chunks(),
            filename=upload.name or "",
            actor=Actor.from_request(request),
        )
        return Response(DriftReferenceOutSerializer(reference).data, status=201)
