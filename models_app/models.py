"""The registry: models, their immutable numbered versions, and aliases."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

NAME_VALIDATOR = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,62}$",
    "Use 1-63 lowercase letters, digits and dashes, starting with a letter or digit.",
)


class RegisteredModel(models.Model):
    """A named model; its versions hold the artifacts."""

    name = models.CharField(max_length=63, unique=True, validators=[NAME_VALIDATOR])
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Archived: hidden from lists unless asked for, never deployed; the artifacts stay.
    archived_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    """One uploaded artifact of a model, numbered 1, 2, 3... Immutable once validated."""

    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Uploaded"
        VALIDATING = "validating", "Validating"
        READY = "ready", "Ready"
        # Failed validation (set by the pipeline). "Rejected" is an approver's decision and
        # lives in `approval`, so the two never read the same.
        INVALID = "invalid", "Invalid"

    class Approval(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    class Format(models.TextChoices):
        UNKNOWN = "", "Unknown"
        PICKLE = "pickle", "pickle"
        JOBLIB = "joblib", "joblib"
        SKOPS = "skops", "skops"

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.UPLOADED, db_index=True
    )
    description = models.TextField(blank=True)
    tags = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    # The artifact: content-addressed storage, so identical bytes are stored once.
    artifact_sha256 = models.CharField(max_length=64, db_index=True)
    artifact_size = models.BigIntegerField()
    original_filename = models.CharField(max_length=255, blank=True)
    format = models.CharField(max_length=10, choices=Format.choices, blank=True)
    # What validation learned.
    declared_sklearn_version = models.CharField(max_length=20, blank=True)
    sklearn_version = models.CharField(max_length=20, blank=True)
    python_requirements = models.JSONField(default=dict, blank=True)
    estimator_class = models.CharField(max_length=255, blank=True)
    task = models.CharField(max_length=30, blank=True)
    schema = models.JSONField(default=dict, blank=True)
    input_example = models.JSONField(null=True, blank=True)
    example_output = models.JSONField(null=True, blank=True)
    report = models.JSONField(default=dict, blank=True)
    rejection_reason = models.TextField(blank=True)
    validation_attempts = models.PositiveSmallIntegerField(default=0)
    # Bumped while a worker validates; the reconciler re-queues versions whose beat went quiet.
    validation_heartbeat_at = models.DateTimeField(null=True, blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    # Approval.
    approval = models.CharField(
        max_length=10, choices=Approval.choices, default=Approval.PENDING, db_index=True
    )
    approval_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approval_at = models.DateTimeField(null=True, blank=True)
    approval_comment = models.TextField(blank=True)
    archived_at = models.DateTimeField(null=True, blank=True, db_index=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__name", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="unique_version_number"),
            models.UniqueConstraint(
                fields=["model", "artifact_sha256"], name="unique_artifact_per_model"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY


class ModelAlias(models.Model):
    """A movable name (`production`, `staging`...) pointing at one version of a model."""

    PRODUCTION = "production"

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=63, validators=[NAME_VALIDATOR])
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="unique_alias_per_model"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"
