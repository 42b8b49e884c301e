"""Registry REST API. Resources are read-only viewsets; commands are small API views."""

from __future__ import annotations

import json

from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
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
    ArchiveInSerializer,
    ModelOutSerializer,
    VersionDetailSerializer,
    VersionOutSerializer,
    VersionUploadSerializer,
)
from models_app.storage import artifact_open
from models_app.uploads import install_upload_limit, upload_too_large
from portal.audit import Actor, audit_record
from portal.permissions import HasCapability

ARCHIVED_PARAM = OpenApiParameter(
    "archived", bool, description="true: archived ones are listed too (hidden by default)"
)


def _include_archived(request) -> bool:
    return request.query_params.get("archived", "").lower() in ("1", "true", "yes")


@extend_schema(parameters=[ARCHIVED_PARAM])
class ModelListApi(ListAPIView):
    permission_classes = [HasCapability("view")]
    serializer_class = ModelOutSerializer

    def get_queryset(self):
        return selectors.model_list(
            search=self.request.query_params.get("search", ""),
            include_archived=_include_archived(self.request),
        ).prefetch_related("aliases__version")


class ModelDetailApi(RetrieveAPIView):
    """GET: one model (archived or not). DELETE (admins): the model, its versions and
    aliases, when no deployment references them."""

    permission_classes = [HasCapability("view", write="delete")]
    serializer_class = ModelOutSerializer
    lookup_field = "name"

    def get_queryset(self):
        return selectors.model_list(include_archived=True).prefetch_related("aliases__version")

    @extend_schema(responses={204: None})
    def delete(self, request, name: str):
        services.model_delete(
            model=selectors.model_get(name=name), actor=Actor.from_request(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelArchiveApi(APIView):
    permission_classes = [HasCapability("archive")]

    @extend_schema(request=ArchiveInSerializer, responses=ModelOutSerializer)
    def post(self, request, name: str):
        serializer = ArchiveInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        model = selectors.model_get(name=name)
        services.model_archive(
            model=model,
            actor=Actor.from_request(request),
            archived=serializer.validated_data["archived"],
        )
        detail = selectors.model_list(include_archived=True).prefetch_related("aliases__version")
        return Response(ModelOutSerializer(detail.get(pk=model.pk)).data)


class VersionListApi(APIView):
    """GET: the model's versions, newest first. POST: upload a new version (multipart)."""

    permission_classes = [HasCapability("view", write="upload")]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(parameters=[ARCHIVED_PARAM], responses=VersionOutSerializer(many=True))
    def get(self, request, name: str):
        model = selectors.model_get(name=name)
        versions = selectors.version_list(model=model, include_archived=_include_archived(request))
        return Response(VersionOutSerializer(versions, many=True).data)

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
    """GET: one version. DELETE (admins): the version and its aliases when no deployment
    references it; its artifact too unless another version holds the same bytes."""

    permission_classes = [HasCapability("view", write="delete")]

    @extend_schema(responses=VersionDetailSerializer)
    def get(self, request, name: str, number: int):
        return Response(
            VersionDetailSerializer(selectors.version_get(model_name=name, number=number)).data
        )

    @extend_schema(responses={204: None})
    def delete(self, request, name: str, number: int):
        services.model_version_delete(
            version=selectors.version_get(model_name=name, number=number),
            actor=Actor.from_request(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class VersionArchiveApi(APIView):
    permission_classes = [HasCapability("archive")]

    @extend_schema(request=ArchiveInSerializer, responses=VersionOutSerializer)
    def post(self, request, name: str, number: int):
        serializer = ArchiveInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = selectors.version_get(model_name=name, number=number)
        services.model_version_archive(
            version=version,
            actor=Actor.from_request(request),
            archived=serializer.validated_data["archived"],
        )
        return Response(VersionOutSerializer(version).data)


class VersionDownloadApi(APIView):
    permission_classes = [HasCapability("view")]

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request, name: str, number: int):
        version = selectors.version_get(model_name=name, number=number)
        plaintext = artifact_open(version.artifact_sha256)  # decrypts as it is sent
        audit_record(
            actor=Actor.from_request(request), action="model_version.downloaded", target=version
        )
        response = FileResponse(
            plaintext,
            as_attachment=True,
            filename=f"{version.model.name}-v{version.number}.{version.format or 'bin'}",
            content_type="application/octet-stream",
        )
        response["Content-Length"] = str(version.artifact_size)
        return response


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
