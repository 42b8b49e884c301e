from rest_framework import serializers

from deployments_app import buildlog
from deployments_app.models import Build, Deployment, DeploymentEvent, Replica, Rollout


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
            "batch_max_size",
            "batch_max_wait_ms",
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
    batch_max_size = serializers.IntegerField(min_value=0, max_value=1000, default=0)
    batch_max_wait_ms = serializers.FloatField(min_value=0, max_value=1000, default=0.0)


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


# --------------------------------------------------------------------------- rollouts

MAX_VERSION = 2**31 - 1  # past the column's range the database would raise, not answer 400


class RolloutCandidateInSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, max_value=MAX_VERSION)
    weight = serializers.IntegerField(min_value=0, max_value=100)


class RolloutSetSerializer(serializers.Serializer):
    candidates = RolloutCandidateInSerializer(many=True, allow_empty=False, max_length=4)
    plan = serializers.ChoiceField(choices=Rollout.Plan.choices, default=Rollout.Plan.MANUAL)
    steps = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=100),
        required=False,
        default=list,
        max_length=20,
    )
    bake_seconds = serializers.IntegerField(min_value=1, max_value=7 * 86400, default=300)
    auto_promote = serializers.BooleanField(default=False)
    # Keys and values are checked by the service against DEFAULT_GUARDRAILS.
    guardrails = serializers.DictField(required=False, default=dict)
    sticky_header = serializers.CharField(
        max_length=64, required=False, allow_blank=True, default=""
    )
    candidate_replicas = serializers.IntegerField(min_value=1, max_value=8, default=1)


class RolloutPromoteSerializer(serializers.Serializer):
    version = serializers.IntegerField(
        min_value=1, max_value=MAX_VERSION, required=False, allow_null=True, default=None
    )


class RolloutAbortSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class RolloutCandidateOutSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    weight = serializers.IntegerField()
    healthy_replicas = serializers.IntegerField()
    live_share = serializers.FloatField(help_text="share of 200 answers, last 5 minutes")


class RolloutOutSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True, help_text="null: never had a rollout")
    status = serializers.CharField(allow_null=True)
    plan = serializers.CharField(allow_null=True)
    steps = serializers.ListField(child=serializers.IntegerField())
    step = serializers.IntegerField()
    bake_seconds = serializers.IntegerField(allow_null=True)
    bake_left_s = serializers.IntegerField(allow_null=True)
    auto_promote = serializers.BooleanField()
    guardrails = serializers.DictField()
    sticky_header = serializers.CharField(allow_blank=True)
    verdict = serializers.CharField(allow_blank=True)
    decision = serializers.DictField()
    created_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    candidates = RolloutCandidateOutSerializer(many=True)
    stable = RolloutCandidateOutSerializer(help_text="weight: what the candidates leave")


class ShadowQuerySerializer(serializers.Serializer):
    minutes = serializers.IntegerField(min_value=1, max_value=7 * 24 * 60, default=60)


class ShadowSetSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, max_value=MAX_VERSION)
    percent = serializers.IntegerField(min_value=1, max_value=100)


class ShadowOutSerializer(serializers.Serializer):
    version = serializers.IntegerField(allow_null=True)
    percent = serializers.IntegerField()
    report = serializers.DictField(
        help_text="samples, answered, shadow_error_rate, primary/shadow p50/p95 ms, kind; "
        "classifiers: label_agreement, mean/max_abs_delta_p; regressors: mae, max_abs_delta"
    )
