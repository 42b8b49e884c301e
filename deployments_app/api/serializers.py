from rest_framework import serializers

from deployments_app import buildlog
from deployments_app.models import Build, Deployment, DeploymentEvent, Replica


class ReplicaOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = Replica
        fields = [
            "name",
            "index",
            "version_number",
            "endpoint",
            "healthy",
            "state",
            "restarts",
            "updated_at",
        ]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if not self.context.get("show_endpoints"):  # viewers: where replicas listen is not theirs
            data.pop("endpoint", None)
        return data


class DeploymentOutSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    version = serializers.IntegerField(source="version.number")
    previous_version = serializers.IntegerField(source="previous_version.number", default=None)
    replica_set = ReplicaOutSerializer(many=True, read_only=True)
    predict_url = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "name",
            "model",
            "version",
            "previous_version",
            "runtime",
            "replicas",
            "memory_mb",
            "cpus",
            "state",
            "desired_state",
            "state_changed_at",
            "failure_reason",
            "replica_set",
            "predict_url",
            "created_at",
        ]

    def get_predict_url(self, obj) -> str:
        return f"/api/v1/deployments/{obj.name}/predict"


class BuildOutSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number")
    # The host's layout (wheelhouse, env cache, temp dirs) is no caller's business.
    log = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()

    def get_log(self, build: Build) -> str:
        return buildlog.hide_paths(build.log)

    def get_error(self, build: Build) -> str:
        return buildlog.hide_paths(build.error)

    class Meta:
        model = Build
        fields = [
            "id",
            "version",
            "status",
            "image_ref",
            "image_digest",
            "image_size",
            "cached",
            "duration_s",
            "error",
            "log",
            "created_at",
            "finished_at",
        ]


class EventOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeploymentEvent
        fields = ["created_at", "state", "message"]


class DeploymentCreateSerializer(serializers.Serializer):
    name = serializers.RegexField(r"^[a-z0-9][a-z0-9-]{0,62}$")
    model = serializers.CharField()
    version = serializers.IntegerField(min_value=1)
    runtime = serializers.ChoiceField(choices=["", "docker", "process"], required=False, default="")
    replicas = serializers.IntegerField(min_value=1, max_value=8, default=1)
    memory_mb = serializers.IntegerField(min_value=64, max_value=16384, default=512)
    cpus = serializers.FloatField(min_value=0.1, max_value=8, default=1.0)


class ActionSerializer(serializers.Serializer):
    action = serializers.ChoiceField(
        choices=["stop", "start", "restart", "scale", "update", "rollback"]
    )
    replicas = serializers.IntegerField(min_value=1, max_value=8, required=False)
    version = serializers.IntegerField(min_value=1, required=False)


class ApiKeyOutSerializer(serializers.Serializer):
    name = serializers.CharField()
    prefix = serializers.CharField()
    owner = serializers.CharField(source="user.username")
    deployments = serializers.SerializerMethodField()
    model = serializers.CharField(source="model.name", default=None)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    rate_limit_per_minute = serializers.IntegerField()
    created_at = serializers.DateTimeField()

    def get_deployments(self, obj) -> list[str]:
        return sorted(d.name for d in obj.deployments.all())


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    deployments = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    model = serializers.CharField(required=False, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    # Omitted: the default within PORTAL_MAX_KEY_RATE_LIMIT (only admins may exceed the cap).
    rate_limit_per_minute = serializers.IntegerField(
        min_value=1, max_value=1_000_000, required=False, allow_null=True, default=None
    )
