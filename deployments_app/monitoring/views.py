"""Pages: a deployment's capture settings (POST) and the export link (GET)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from deployments_app import selectors
from deployments_app.api.monitoring import export_response
from deployments_app.monitoring import services as monitoring
from deployments_app.monitoring.forms import CapturePolicyForm
from portal.audit import Actor
from portal.errors import ApplicationError
from portal.permissions import capability_required


@require_POST
@capability_required("deploy")
def capture_set(request: HttpRequest, name: str) -> HttpResponse:
    deployment = selectors.deployment_get(name=name)
    form = CapturePolicyForm(request.POST)
    try:
        if not form.is_valid():
            raise ApplicationError("; ".join(f"{f}: {' '.join(e)}" for f, e in form.errors.items()))
        data = form.cleaned_data
        policy = monitoring.capture_policy_set(
            deployment=deployment,
            actor=Actor.from_request(request),
            percent=data["percent"],
            inputs=data["inputs"],
            outputs=data["outputs"],
            fields=data["rules"],
            retention_days=data["retention_days"],
        )
        messages.success(
            request, f"Capture policy v{policy['version']}: {policy['percent']}% of calls."
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect(reverse("deployment-detail", args=[name]) + "#drift")


@require_GET
@capability_required("deploy")
def capture_export(request: HttpRequest, name: str) -> HttpResponse:
    fmt = request.GET.get("format", "csv")
    try:
        return export_response(
            deployment=selectors.deployment_get(name=name),
            actor=Actor.from_request(request),
            fmt=fmt,
        )
    except ApplicationError as exc:
        return HttpResponse(exc.message, status=400, content_type="text/plain")
