"""Registry REST API. Resources are read-only viewsets; commands are small API views."""

from __future__ import annotations

import json

from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from models_app import selectors, services
from models_app.api.serializers import (
    AliasInSerializer,
    AliasOutSerializer,
    ApprovalInSerializer,
    ModelOutSerializer,
    VersionDetailSerializer,
    VersionOutSerializer,
    VersionUploadSerializer,
)
from models_app.storage import artifact_path
from models_app.uploads import install_upload_limit, upload_too_large
from portal.audit import Actor, audit_record
from portal.permissions import HasCapability


class ModelListApi(ListAPIView):
    permission_classes = [HasCapability("view")]
    serializer_class = ModelOutSerializer

    def get_queryset(self):
        return selectors.model_list(
            search=self.request.query_params.get("search", "")
        ).prefetch_related("aliases__version")


class ModelDetailApi(RetrieveAPIView):
    permission_classes = [HasCapability("view")]
    serializer_class = ModelOutSerializer
    lookup_field = "name"

    def get_queryset(self):
        return selectors.model_list().prefetch_related("aliases__version")


class VersionListApi(APIView):
    """GET: the model's versions, newest first. POST: upload a new version (multipart)."""

    permission_classes = [HasCapability("view", write="upload")]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(responses=VersionOutSerializer(many=True))
    def get(self, request, name: str):
        model = selectors.model_get(name=name)
        return Response(VersionOutSerializer(selectors.version_list(model=model), many=True).data)

    @extend_schema(
        request={"multipart/form-data": VersionUploadSerializer},
        responses={201: VersionOutSerializer, 200: VersionOutSerializer},
    )
    def post(self, request, name: str):
        install_upload_limit(request)
        if upload_too_large(request):
            return Response(
                {"error": f"the file is larger than the limit of {services.max_upload_mb()} MB"},
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        serializer = VersionUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        example = data["input_example"]
        version, created = services.model_version_upload(
            model_name=name,
            chunks=data["file"].chunks(),
            actor=Actor.from_request(request),
            user=request.user,
            filename=data["file"].name,
            description=data["description"],
            example_text=json.dumps(example) if example is not None else "",
            tags=[t.strip() for t in data["tags"].split(",") if t.strip()],
            metrics=data["metrics"],
            sklearn_version=data["sklearn_version"],
        )
        return Response(
            VersionOutSerializer(version).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class VersionDetailApi(APIView):
    permission_classes = [HasCapability("view")]

    @extend_schema(responses=VersionDetailSerializer)
    def get(self, request, name: str, number: int):
        return Response(
            VersionDetailSerializer(selectors.version_get(model_name=name, number=number)).data
        )


class VersionDownloadApi(APIView):
    permission_classes = [HasCapability("view")]

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request, name: str, number: int):
        version = selectors.version_get(model_name=name, number=number)
        audit_record(
            actor=Actor.from_request(request), action="model_version.downloaded", target=version
        )
        return FileResponse(
            open(artifact_path(version.artifact_sha256), "rb"),  # noqa: SIM115
            as_attachment=True,
            filename=f"{version.model.name}-v{version.number}.{version.format or 'bin'}",
            content_type="application/octet-stream",
        )


class VersionApprovalApi(APIView):
    permission_classes = [HasCapability("approve")]

    @extend_schema(request=ApprovalInSerializer, responses=VersionOutSerializer)
    def post(self, request, name: str, number: int):
        serializer = ApprovalInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = services.model_version_approve(
            version=selectors.version_get(model_name=name, number=number),
            user=request.user,
            actor=Actor.from_request(request),
            approve=serializer.validated_data["decision"] == "approve",
            comment=serializer.validated_data["comment"],
        )
        return Response(VersionOutSerializer(version).data)


class AliasApi(APIView):
    permission_classes = [HasCapability("view", write="deploy")]

    @extend_schema(request=AliasInSerializer, responses=AliasOutSerializer)
    def put(self, request, name: str, alias: str):
        serializer = AliasInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = services.model_alias_set(
            model=selectors.model_get(name=name),
            name=alias,
            version_number=serializer.validated_data["version"],
            user=request.user,
            actor=Actor.from_request(request),
        )
        return Response(AliasOutSerializer(result).data)

    @extend_schema(responses={204: None})
    def delete(self, request, name: str, alias: str):
        services.model_alias_delete(
            model=selectors.model_get(name=name), name=alias, actor=Actor.from_request(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
