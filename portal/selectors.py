"""Read-side queries of the core app."""

from __future__ import annotations

from collections.abc import Mapping

from django.apps import apps
from django.db.models import Count, QuerySet

from portal.models import AuditEvent


def audit_event_list(*, filters: Mapping[str, str]) -> QuerySet[AuditEvent]:
    qs = AuditEvent.objects.order_by("-id")
    if actor := filters.get("actor"):
        qs = qs.filter(actor_name__icontains=actor)
    if action := filters.get("action"):
        qs = qs.filter(action__startswith=action)
    if target := filters.get("target"):
        qs = qs.filter(target_name__icontains=target)
    if outcome := filters.get("outcome"):
        qs = qs.filter(outcome=outcome)
    return qs


def portal_summary() -> dict[str, object]:
    """Counts for the home page. Looked up by app label so the core does not import apps."""
    summary: dict[str, object] = {}
    if apps.is_installed("models_app"):
        Model = apps.get_model("models_app", "RegisteredModel")  # noqa: N806
        Version = apps.get_model("models_app", "ModelVersion")  # noqa: N806
        summary["models"] = Model.objects.count()
        summary["versions_by_status"] = dict(
            Version.objects.values_list("status").annotate(n=Count("id")).order_by()
        )
    if apps.is_installed("deployments_app"):
        try:
            Deployment = apps.get_model("deployments_app", "Deployment")  # noqa: N806
        except LookupError:
            Deployment = None  # noqa: N806
        if Deployment is not None:
            summary["deployments_by_state"] = dict(
                Deployment.objects.values_list("state").annotate(n=Count("id")).order_by()
            )
    summary["audit_events"] = AuditEvent.objects.count()
    return summary
