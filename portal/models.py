"""The append-only audit log and personal access tokens."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """One recorded action. Written only through `portal.audit.audit_record`.

    Each row carries the hash of the previous row and its own hash over its content (an HMAC
    with the audit key, named by `key_id`), so an edited or deleted row breaks the chain
    (`manage.py audit_verify` finds the first break; checkpoints kept outside the database
    show deleted newest rows, see portal.audit).
    Actor and target names are copied as strings so history survives deletes.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        FAILURE = "failure", "Failure"
        DENIED = "denied", "Denied"

    created_at = models.DateTimeField(db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=50, blank=True, db_index=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_name = models.CharField(max_length=255, blank=True)
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    # Which audit key signed the row; "" for rows written before the chain was keyed.
    key_id = models.CharField(max_length=16, blank=True, default="")

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["actor_name", "created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name or '-'} {self.action}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise RuntimeError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise RuntimeError("audit events are append-only")


class AccessToken(models.Model):
    """A personal access token for the control-plane API (`pt_<prefix>_<secret>`).

    Only a SHA-256 of the whole token is kept; the raw token is shown once. A request made
    with it may do what both the owner's roles and the token's scopes allow
    (portal.roles.SCOPE_CAPABILITIES). Prediction calls use API keys, not these tokens.
    """

    class Scope(models.TextChoices):
        READ = "read", "Read"
        UPLOAD = "upload", "Upload"
        DEPLOY = "deploy", "Deploy"
        APPROVE = "approve", "Approve"
        ADMIN = "admin", "Admin"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    token_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} (pt_{self.prefix})"
