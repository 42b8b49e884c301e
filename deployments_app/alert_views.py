"""Alert pages: the alerts list, and the rule and webhook forms of a deployment's page."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from deployments_app import selectors
from deployments_app.models import Alert, AlertRule, Deployment
from deployments_app.monitoring import alerts, webhooks
from portal.audit import Actor
from portal.errors import ApplicationError
from portal.permissions import capability_required

LISTED = 200


class AlertRuleForm(forms.Form):
    kind = forms.ChoiceField(choices=AlertRule.Kind.choices)
    threshold = forms.FloatField(min_value=0)
    clear_threshold = forms.FloatField(min_value=0, required=False)
    window_minutes = forms.IntegerField(min_value=1, max_value=alerts.MAX_WINDOW_MINUTES, initial=5)
    min_requests = forms.IntegerField(min_value=0, max_value=1_000_000, initial=20)
    fire_after = forms.IntegerField(min_value=1, max_value=100, initial=1)
    resolve_after = forms.IntegerField(min_value=1, max_value=100, initial=2)


class WebhookForm(forms.Form):
    url = forms.CharField(max_length=500)
    enabled = forms.BooleanField(required=False)
    rotate_secret = forms.BooleanField(required=False)


def secret_session_key(name: str) -> str:
    return f"alert-webhook-secret:{name}"


def _errors(form: forms.Form) -> str:
    return "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())


def _back(name: str) -> HttpResponse:
    return redirect(reverse("deployment-detail", args=[name]) + "#alerts")


@require_GET
@capability_required("view")
def alert_list(request: HttpRequest) -> HttpResponse:
    name = request.GET.get("deployment", "").strip()
    state = request.GET.get("state", "")
    state = state if state in Alert.State.values else ""
    deployment = Deployment.objects.filter(name=name).first() if name else None
    qs = alerts.alerts_for(deployment=deployment, state=state)
    if name and deployment is None:
        qs = qs.none()
    return render(
        request,
        "deployments_app/alert_list.html",
        {
            "alerts": qs[:LISTED],
            "listed": LISTED,
            "deployment_names": Deployment.objects.order_by("name").values_list("name", flat=True),
            "selected": {"deployment": name, "state": state},
            "states": Alert.State.choices,
            "firing_count": Alert.objects.filter(state=Alert.State.FIRING).count(),
        },
    )


@require_POST
@capability_required("deploy")
def alert_rule_add(request: HttpRequest, name: str) -> HttpResponse:
    deployment = selectors.deployment_get(name=name)
    form = AlertRuleForm(request.POST)
    try:
        if not form.is_valid():
            raise ApplicationError(_errors(form))
        rule = alerts.alert_rule_create(
            deployment=deployment, actor=Actor.from_request(request), **form.cleaned_data
        )
        messages.success(request, f"Alert rule {rule.pk} added: {rule.get_kind_display()} "
                                  f"{rule.threshold:g}.")  # fmt: skip
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return _back(name)


@require_POST
@capability_required("deploy")
def alert_rule_remove(request: HttpRequest, name: str, rule_id: int) -> HttpResponse:
    deployment = selectors.deployment_get(name=name)
    try:
        rule = alerts.alert_rule_get(deployment=deployment, rule_id=rule_id)
        alerts.alert_rule_delete(rule=rule, actor=Actor.from_request(request))
        messages.success(request, f"Alert rule {rule_id} deleted.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return _back(name)


@require_POST
@capability_required("deploy")
def alert_webhook(request: HttpRequest, name: str) -> HttpResponse:
    deployment = selectors.deployment_get(name=name)
    actor = Actor.from_request(request)
    try:
        if "delete" in request.POST:
            webhooks.alert_webhook_delete(deployment=deployment, actor=actor)
            messages.success(request, "Webhook removed: alerts are no longer posted.")
            return _back(name)
        form = WebhookForm(request.POST)
        if not form.is_valid():
            raise ApplicationError(_errors(form))
        hook, secret = webhooks.alert_webhook_set(
            deployment=deployment, actor=actor, **form.cleaned_data
        )
        messages.success(request, f"Webhook set: alerts are posted to {hook.url}.")
        if secret:
            # Shown once by the page (templatetags/alerts.py), from the session: a message
            # could travel in a cookie.
            request.session[secret_session_key(name)] = secret
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return _back(name)
