"""The capture and drift part of a deployment's page reads its own data
(templates/deployments_app/_drift.html)."""

from __future__ import annotations

from django import template

from deployments_app.models import DriftReference
from deployments_app.monitoring import drift
from deployments_app.monitoring import services as monitoring
from deployments_app.monitoring.forms import format_rules

register = template.Library()


@register.simple_tag
def deployment_monitoring(deployment) -> dict:
    policy = monitoring.capture_policy_get(deployment=deployment)
    table = drift.drift_table(deployment)
    return {
        "policy": policy,
        "rules_text": format_rules(policy["fields"]),
        "features": table,
        "window": table[0] if table else None,
        "reference": DriftReference.objects.filter(version=deployment.version).first(),
        "has_example": bool(deployment.version.input_example),
    }
