"""The alerts part of a deployment's page reads its own data (templates/.../_alerts.html)."""

from __future__ import annotations

from django import template

from deployments_app.models import Alert, AlertRule, AlertWebhook
from deployments_app.monitoring import alerts

register = template.Library()
SHOWN = 10


@register.simple_tag
def deployment_alerts(deployment) -> dict:
    return {
        "rules": list(AlertRule.objects.filter(deployment=deployment).order_by("id")),
        "recent": list(alerts.alerts_for(deployment=deployment)[:SHOWN]),
        "firing": Alert.objects.filter(deployment=deployment, state=Alert.State.FIRING).count(),
        "webhook": AlertWebhook.objects.filter(deployment=deployment).first(),
        "kinds": AlertRule.Kind.choices,
        "low_kinds": [str(k) for k in alerts.LOW_KINDS],
    }
