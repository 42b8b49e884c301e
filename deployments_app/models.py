"""Deployments: desired state, observed state, builds, replicas and their history."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from models_app.models import NAME_VALIDATOR, ModelVersion, RegisteredModel


class Deployment(models.Model):
    """A named, running (or stopped) service for one version of a model.

    `state` is what the portal observed last; `desired_state` is what the user asked for.
    The reconciler moves the first towards the second.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        BUILDING = "building", "Building"
        STARTING = "starting", "Starting"
        RUNNING = "running", "Running"
        DEGRADED = "degraded", "Degraded"
        FAILED = "failed", "Failed"
        STOPPING = "stopping", "Stopping"
        STOPPED = "stopped", "Stopped"

    class Desired(models.TextChoices):
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    ACTIVE_STATES = (State.PENDING, State.BUILDING, State.STARTING)

    name = models.CharField(max_length=63, unique=True, validators=[NAME_VALIDATOR])
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="deployments")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployments")
    previous_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    runtime = models.CharField(max_length=20)
    replicas = models.PositiveSmallIntegerField(default=1)
    memory_mb = models.PositiveIntegerField(default=512)
    cpus = models.FloatField(default=1.0)
    pids_limit = models.PositiveIntegerField(default=128)
    # Adaptive batching in each replica (off by default: it pays for costly models only).
    batch_max_size = models.PositiveIntegerField(
        default=0, help_text="Most rows in one predict call per replica (0 or 1: off)."
    )
    batch_max_wait_ms = models.FloatField(
        default=0.0, help_text="How long an open batch may wait for more requests (ms)."
    )
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.PENDING, db_index=True
    )
    desired_state = models.CharField(
        max_length=10, choices=Desired.choices, default=Desired.RUNNING
    )
    state_changed_at = models.DateTimeField(auto_now_add=True)
    # Set by the task doing the work; the reconciler re-queues work whose heartbeat went quiet.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    work_attempts = models.PositiveSmallIntegerField(default=0)
    failure_reason = models.TextField(blank=True)
    capture_percent = models.PositiveSmallIntegerField(
        default=0, help_text="Share of prediction payloads stored with the log (0 = none)."
    )
    # Shadow traffic: a copy of this share of calls goes to shadow_version after the answer.
    shadow_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    shadow_percent = models.PositiveSmallIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Build(models.Model):
    """An image (or process bundle) for one version; kept so rollbacks need no rebuild."""

    class Status(models.TextChoices):
        BUILDING = "building", "Building"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="builds")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.BUILDING)
    image_ref = models.CharField(max_length=255, blank=True)
    image_digest = models.CharField(max_length=100, blank=True)
    image_size = models.BigIntegerField(null=True, blank=True)
    cached = models.BooleanField(default=False)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    duration_s = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.deployment.name} build {self.pk} (v{self.version.number})"


class Replica(models.Model):
    """The observed replicas: the proxy reads healthy endpoints from here."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replica_set")
    name = models.CharField(max_length=120, unique=True)
    index = models.PositiveSmallIntegerField()
    version_number = models.PositiveIntegerField()
    endpoint = models.CharField(max_length=200, blank=True)
    healthy = models.BooleanField(default=False)
    state = models.CharField(max_length=20, default="starting")
    detail = models.TextField(blank=True)
    restarts = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["deployment__name", "index"]

    def __str__(self) -> str:
        return self.name


class DeploymentEvent(models.Model):
    """The history shown on a deployment's page: state changes and what caused them."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    state = models.CharField(max_length=10, blank=True)
    message = models.TextField()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.deployment.name}: {self.message[:60]}"


class ApiKey(models.Model):
    """A caller's key for the prediction API, scoped to deployments or a whole model.

    Only a SHA-256 of the key is stored: keys are 32 random bytes, so a fast hash is as strong
    as a slow one and keeps the check cheap on every call. `prefix` finds the row.
    """

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    deployments = models.ManyToManyField(Deployment, blank=True, related_name="api_keys")
    model = models.ForeignKey(
        RegisteredModel,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="api_keys",
        help_text="Every deployment of this model (now and later).",
    )
    rate_limit_per_minute = models.PositiveIntegerField(default=6000)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class PredictionLog(models.Model):
    """One row per prediction call, answered or refused, written before the answer leaves."""

    created_at = models.DateTimeField(db_index=True)
    # No database constraint: a log row is history, written on the hot path from a briefly
    # cached view of the deployment, and must never fail because the row was just deleted.
    deployment = models.ForeignKey(
        Deployment, null=True, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    deployment_name = models.CharField(max_length=63, db_index=True)
    model_name = models.CharField(max_length=63, blank=True)
    version_number = models.PositiveIntegerField(null=True)
    caller = models.CharField(max_length=150, blank=True)
    api_key_prefix = models.CharField(max_length=16, blank=True)
    status_code = models.PositiveSmallIntegerField()
    latency_ms = models.FloatField()
    upstream_ms = models.FloatField(null=True)
    rows = models.PositiveIntegerField(default=0)
    input_bytes = models.PositiveIntegerField(default=0)
    input_sha256 = models.CharField(max_length=64, blank=True)
    client_ip = models.GenericIPAddressField(null=True)
    request_id = models.CharField(max_length=64, blank=True)
    replica = models.CharField(max_length=120, blank=True)
    error = models.TextField(blank=True)
    payload = models.JSONField(null=True, blank=True)
    # The call asked for per-feature contributions (`params: {"explain": true}`).
    explained = models.BooleanField(default=False)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["deployment_name", "created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%H:%M:%S} {self.deployment_name} {self.status_code}"


class PredictionRollup(models.Model):
    """Prediction figures of one deployment and version over one minute, hour or day.

    Folded from PredictionLog by `deployments_app.rollups` (minutes from raw rows, hours from
    minutes, days from hours), so pages read a few hundred rollups instead of millions of
    rows; `histogram` holds latency bucket counts (`portal.latency`) for the percentiles.
    """

    class Resolution(models.TextChoices):
        MINUTE = "minute"
        HOUR = "hour"
        DAY = "day"

    resolution = models.CharField(max_length=6, choices=Resolution.choices)
    bucket_start = models.DateTimeField()
    deployment_name = models.CharField(max_length=63)
    version_number = models.PositiveIntegerField(default=0, help_text="0: no version known.")
    requests = models.PositiveIntegerField(default=0)
    errors_4xx = models.PositiveIntegerField(default=0)
    errors_5xx = models.PositiveIntegerField(default=0)
    rows = models.PositiveBigIntegerField(default=0)
    input_bytes = models.PositiveBigIntegerField(default=0)
    latency_ms_sum = models.FloatField(default=0.0)
    histogram = models.JSONField(default=dict)

    class Meta:
        ordering = ["resolution", "bucket_start", "deployment_name", "version_number"]
        constraints = [
            models.UniqueConstraint(
                fields=["resolution", "bucket_start", "deployment_name", "version_number"],
                name="prediction_rollup_unique_bucket",
            )
        ]
        indexes = [
            models.Index(
                fields=["resolution", "deployment_name", "bucket_start"],
                name="prediction_rollup_by_name",
            )
        ]

    def __str__(self) -> str:
        return f"{self.resolution} {self.bucket_start:%Y-%m-%d %H:%M} {self.deployment_name}"


class PredictionRollupState(models.Model):
    """The fold's watermark (a single row): every PredictionLog row created before
    `folded_until` is counted in the rollups; readers add raw rows from there on."""

    folded_until = models.DateTimeField(null=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"folded until {self.folded_until}"


class Rollout(models.Model):
    """Candidates beside a deployment's stable version, each with a share of the traffic.

    A change replaces the whole rollout (a new row: its id seeds the sticky hash, so the
    layout of callers is the rollout's own). `plan` says how the first candidate's weight
    moves: `manual` (the weights as given), `canary` (one step) or `linear` (`steps`); each
    step bakes `bake_seconds` and is judged on the prediction log by `guardrails`.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PROMOTED = "promoted", "Promoted"
        ROLLED_BACK = "rolled_back", "Rolled back"
        ABORTED = "aborted", "Aborted"
        REPLACED = "replaced", "Replaced"

    class Plan(models.TextChoices):
        MANUAL = "manual", "Manual"
        CANARY = "canary", "Canary"
        LINEAR = "linear", "Linear"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="rollouts")
    stable_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.ACTIVE, db_index=True
    )
    plan = models.CharField(max_length=8, choices=Plan.choices, default=Plan.MANUAL)
    steps = models.JSONField(default=list, blank=True)  # the first candidate's weight per step
    step = models.PositiveSmallIntegerField(default=0)
    step_started_at = models.DateTimeField(null=True, blank=True)
    bake_seconds = models.PositiveIntegerField(default=300)
    auto_promote = models.BooleanField(default=False)
    guardrails = models.JSONField(default=dict, blank=True)
    # The header naming a caller for a sticky split ("Authorization": by API key); "" = random.
    sticky_header = models.CharField(max_length=64, blank=True)
    candidate_replicas = models.PositiveSmallIntegerField(default=1)
    verdict = models.CharField(max_length=200, blank=True)
    decision = models.JSONField(default=dict, blank=True)  # the metrics of the last judgement
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment"],
                condition=models.Q(status="active"),
                name="one_active_rollout_per_deployment",
            )
        ]

    def __str__(self) -> str:
        return f"{self.deployment.name} rollout {self.pk} ({self.status})"


class RolloutCandidate(models.Model):
    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="candidates")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    weight = models.PositiveSmallIntegerField()  # percent of the traffic

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["rollout", "version"], name="one_weight_per_version")
        ]

    def __str__(self) -> str:
        return f"v{self.version.number} at {self.weight}%"


class ShadowPair(models.Model):
    """One call answered by the primary version and, after the answer, by the shadow."""

    deployment_name = models.CharField(max_length=63)
    created_at = models.DateTimeField(db_index=True)
    request_id = models.CharField(max_length=64, blank=True)
    primary_version = models.PositiveIntegerField()
    shadow_version = models.PositiveIntegerField()
    primary_ms = models.FloatField()
    shadow_ms = models.FloatField(null=True)
    shadow_status = models.PositiveSmallIntegerField()
    primary = models.JSONField()  # {"predictions": [...], "probabilities": [...]}
    shadow = models.JSONField(null=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["deployment_name", "created_at"])]

    def __str__(self) -> str:
        return f"{self.deployment_name} v{self.primary_version}/v{self.shadow_version}"


class AlertRule(models.Model):
    """A condition on one deployment that fires an alert when it holds (issue 19).

    `threshold` is compared to the rule's figure over the last `window_minutes`; the alert
    resolves once the figure is back past `clear_threshold` (hysteresis; null: the threshold)
    for `resolve_after` evaluations in a row. `eval_state` is the evaluator's memory between
    runs (consecutive breaches/clears, restart samples); nobody else writes it.
    """

    class Kind(models.TextChoices):
        DRIFT = "drift", "Drift score above"
        ERROR_RATE = "error_rate", "Error rate (%) above"
        P95_LATENCY = "p95_latency", "p95 latency (ms) above"
        NO_TRAFFIC = "no_traffic", "Requests in window at most"
        REPLICA_RESTARTS = "replica_restarts", "Replica restarts in window above"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="alert_rules")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    threshold = models.FloatField()
    clear_threshold = models.FloatField(null=True, blank=True)
    window_minutes = models.PositiveIntegerField(default=5)
    min_requests = models.PositiveIntegerField(default=20)
    fire_after = models.PositiveSmallIntegerField(default=1)
    resolve_after = models.PositiveSmallIntegerField(default=2)
    enabled = models.BooleanField(default=True)
    eval_state = models.JSONField(default=dict, blank=True)
    last_evaluated_at = models.DateTimeField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["deployment__name", "id"]

    def __str__(self) -> str:
        return f"{self.deployment.name}: {self.kind} {self.threshold:g}"


class Alert(models.Model):
    """One firing of a rule, from fired to resolved, with the state of its webhook delivery."""

    class State(models.TextChoices):
        FIRING = "firing", "Firing"
        RESOLVED = "resolved", "Resolved"

    class Delivery(models.TextChoices):
        NONE = "none", "No webhook"
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    rule = models.ForeignKey(
        AlertRule, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=20, choices=AlertRule.Kind.choices)
    threshold = models.FloatField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.FIRING)
    value = models.FloatField(null=True)
    resolved_value = models.FloatField(null=True, blank=True)
    message = models.TextField(blank=True)
    fired_at = models.DateTimeField(db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    delivery_status = models.CharField(
        max_length=10, choices=Delivery.choices, default=Delivery.NONE
    )
    delivery_event = models.CharField(max_length=10, blank=True)  # "fired" or "resolved"
    delivery_attempts = models.PositiveSmallIntegerField(default=0)
    delivery_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-fired_at", "-id"]
        indexes = [models.Index(fields=["state", "fired_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["rule"],
                condition=models.Q(state="firing"),
                name="alert_one_firing_per_rule",
            )
        ]

    def __str__(self) -> str:
        return f"{self.deployment.name}: {self.kind} {self.state}"


class AlertWebhook(models.Model):
    """Where a deployment's alerts are posted; `secret` signs each body (HMAC-SHA256)."""

    deployment = models.OneToOneField(
        Deployment, on_delete=models.CASCADE, related_name="alert_webhook"
    )
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=128)
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.deployment.name} -> {self.url}"


class CapturePolicy(models.Model):
    """What of a deployment's sampled calls is kept (issue 19), applied before any write.

    The sampling share is `Deployment.capture_percent`. `fields` maps a column name (or a JSON
    pointer into a row, `/0`, for positional models and V2 tensors) to
    `{"action": "keep" | "drop" | "mask" | "hash" | "truncate", "length": n}`; columns not
    named are kept. `version` goes up on every change and is stored in each captured record.
    Captured records live in `PredictionLog.payload`; after `retention_days` the beat clears
    them (the log row itself stays for its own retention).
    """

    deployment = models.OneToOneField(
        Deployment, on_delete=models.CASCADE, related_name="capture_policy"
    )
    version = models.PositiveIntegerField(default=1)
    inputs = models.BooleanField(default=True)
    outputs = models.BooleanField(default=True)
    fields = models.JSONField(default=dict, blank=True)
    retention_days = models.PositiveSmallIntegerField(default=7)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.deployment.name} capture policy v{self.version}"


class DriftReference(models.Model):
    """The reference sample of one version that captured inputs are compared with.

    `source` is the version's input example, or a dataset uploaded for it (its bytes in the
    artifact store under `sha256`). `profile` holds per feature what drift needs: quantile
    bin edges and shares (numbers), category shares (strings), the range and a sample for
    the KS test. `predictions` is the model's output distribution on the sample, filled by
    the drift task the first time a replica of the version can answer.
    """

    class Source(models.TextChoices):
        INPUT_EXAMPLE = "input_example", "Input example"
        DATASET = "dataset", "Uploaded dataset"

    version = models.OneToOneField(
        ModelVersion, on_delete=models.CASCADE, related_name="drift_reference"
    )
    source = models.CharField(max_length=14, choices=Source.choices)
    sha256 = models.CharField(max_length=64, blank=True)
    filename = models.CharField(max_length=255, blank=True)
    size = models.BigIntegerField(default=0)
    rows = models.PositiveIntegerField(default=0)
    profile = models.JSONField(default=dict)
    predictions = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.version} reference ({self.source}, {self.rows} rows)"


class DriftSnapshot(models.Model):
    """One feature's drift (or the predictions', feature `PREDICTION`) for one deployment
    and version over one window of captured calls, as the drift task computed it."""

    PREDICTION = "(prediction)"

    class Kind(models.TextChoices):
        NUMBER = "number", "Number"
        CATEGORY = "category", "Category"
        PREDICTION = "prediction", "Prediction"

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="drift_snapshots"
    )
    version_number = models.PositiveIntegerField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    feature = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    psi = models.FloatField()
    ks = models.FloatField(null=True, blank=True)
    chi2_p = models.FloatField(null=True, blank=True)
    missing_share = models.FloatField(default=0.0)
    out_of_range_share = models.FloatField(default=0.0)
    count = models.PositiveIntegerField(default=0)
    # What the panel shows beside the scores: the window's and the reference's shares.
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-window_end", "-psi"]
        indexes = [
            models.Index(fields=["deployment", "window_end"], name="drift_snapshot_latest"),
        ]

    def __str__(self) -> str:
        return f"{self.deployment.name} {self.feature} psi {self.psi:.3f}"
