"""The alerts part of a deployment's page reads its own data (templates/.../_alerts.html)."""

from __future__ import annotations

from django import template

from deployments_app.alert_views import secret_session_key
from deployments_app.models import Alert, AlertRule, AlertWebhook
from deployments_app.monitoring import alerts, webhooks
from portal.roles import user_can

register = template.Library()
SHOWN = 10


@register.simple_tag(takes_context=True)
def deployment_alerts(context, deployment) -> dict:
    request = context.get("request")
    session = getattr(request, "session", None)
    new_secret = session.pop(secret_session_key(deployment.name), None) if session else None
    hook = AlertWebhook.objects.filter(deployment=deployment).first()
    can_deploy = bool(request and user_can(request.user, "deploy"))
    return {
        "new_secret": new_secret,
        "rules": list(AlertRule.objects.filter(deployment=deployment).order_by("id")),
        "recent": list(alerts.alerts_for(deployment=deployment)[:SHOWN]),
        "firing": Alert.objects.filter(deployment=deployment, state=Alert.State.FIRING).count(),
        "webhook": hook,
        "webhook_shown": (hook.url if can_deploy else webhooks.redacted_url(hook.url))
        if hook
        else "",
        "kinds": AlertRule.Kind.choices,
        "low_kinds": [str(k) for k in alerts.LOW_KINDS],
    }
