from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from models_app.models import ModelAlias, ModelVersion, RegisteredModel
from portal import jsonlimits


class AliasOutSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number")

    class Meta:
        model = ModelAlias
        fields = ["name", "version", "updated_at"]


class ModelOutSerializer(serializers.ModelSerializer):
    version_count = serializers.IntegerField(read_only=True)
    ready_count = serializers.IntegerField(read_only=True)
    aliases = AliasOutSerializer(many=True, read_only=True)

    class Meta:
        model = RegisteredModel
        fields = [
            "name",
            "description",
            "archived_at",
            "created_at",
            "updated_at",
            "version_count",
            "ready_count",
            "aliases",
        ]


class VersionOutSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    uploaded_by = serializers.CharField(source="uploaded_by.username", default=None)
    approval_by = serializers.CharField(source="approval_by.username", default=None)
    aliases = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "model",
            "number",
            "status",
            "approval",
            "approval_by",
            "approval_at",
            "approval_comment",
            "archived_at",
            "aliases",
            "format",
            "artifact_sha256",
            "artifact_size",
            "original_filename",
            "sklearn_version",
            "python_requirements",
            "estimator_class",
            "task",
            "schema",
            "input_example",
            "example_output",
            "rejection_reason",
            "description",
            "tags",
            "metrics",
            "uploaded_by",
            "created_at",
            "validated_at",
        ]

    def get_aliases(self, obj) -> list[str]:
        return sorted(a.name for a in obj.aliases.all())


class VersionDetailSerializer(VersionOutSerializer):
    class Meta(VersionOutSerializer.Meta):
        fields = [*VersionOutSerializer.Meta.fields, "report"]


@extend_schema_field(OpenApiTypes.STR)
class JSONField(serializers.Field):
    """Accepts a JSON value, or (in multipart forms) a string holding JSON."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            try:
                return jsonlimits.loads(data) if data.strip() else None
            except jsonlimits.JSONLimitError as exc:
                raise serializers.ValidationError(f"not valid JSON: {exc}") from exc
        return data

    def to_representation(self, value):
        return value


class VersionUploadSerializer(serializers.Serializer):
    file = serializers.FileField()
    description = serializers.CharField(required=False, allow_blank=True, default="")
    input_example = JSONField(
        required=False, default=None, help_text="rows (lists) or records (objects), as JSON"
    )
    tags = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=1000, help_text="comma-separated"
    )
    metrics = JSONField(required=False, default=None)
    sklearn_version = serializers.RegexField(
        r"^\d+(\.\d+){1,2}$", required=False, allow_blank=True, default=""
    )

    def validate_metrics(self, value):
        if value is not None and not isinstance(value, dict):
            raise serializers.ValidationError("metrics must be a JSON object")
        return value or {}


class ApprovalInSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["approve", "reject"])
    comment = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="required to reject"
    )


class ArchiveInSerializer(serializers.Serializer):
    archived = serializers.BooleanField(default=True, help_text="false to unarchive")


class AliasInSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)
