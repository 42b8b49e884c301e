"""Deployment pages: list, detail (live build log and state), deploy and action forms."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from deployments_app import selectors, services
from deployments_app.api.views import run_action
from deployments_app.forms import DeployForm, ScaleForm, UpdateForm
from models_app import selectors as model_selectors
from portal import selectors as portal_selectors
from portal.audit import Actor
from portal.errors import ApplicationError
from portal.permissions import capability_required
from portal.roles import user_can


@require_GET
@capability_required("view")
def deployment_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "deployments_app/deployment_list.html",
        {"deployments": selectors.deployment_list()},
    )


def _try_it_body(deployment) -> str:
    """The version's input example as a predict body, for the page's "try it" form."""
    example = deployment.version.input_example or {}
    rows = example.get("rows") if isinstance(example, dict) else None
    return json.dumps({"instances": rows or [[]]}, indent=2)


@require_GET
@capability_required("view")
def deployment_detail(request: HttpRequest, name: str) -> HttpResponse:
    deployment = selectors.deployment_get(name=name)
    stats = portal_selectors.deployment_call_stats(deployment_name=deployment.name)
    return render(
        request,
        "deployments_app/deployment_detail.html",
        {
            "deployment": deployment,
            "build": deployment.builds.select_related("version").first(),
            "events": deployment.events.all()[:50],
            "replicas": deployment.replica_set.all(),
            "other_versions": deployment.model.versions.filter(status="ready")
            .exclude(pk=deployment.version_id)
            .order_by("-number"),
            "scale_form": ScaleForm(initial={"replicas": deployment.replicas}),
            "stats": stats.get(deployment.name, portal_selectors.CallStats()),
            "calls": portal_selectors.recent_predictions(deployment_name=deployment.name),
            "series": portal_selectors.prediction_series(deployment_name=deployment.name),
            "ranges": list(portal_selectors.RANGES),
            "try_it_body": _try_it_body(deployment),
        },
    )


@require_GET
@capability_required("view")
def deployment_status(request: HttpRequest, name: str) -> JsonResponse:
    """What the page polls while work is in progress: state, events, the build log tail."""
    deployment = selectors.deployment_get(name=name)
    build = deployment.builds.first()
    show_endpoints = user_can(request.user, "replica_endpoints")
    return JsonResponse(
        {
            "state": deployment.state,
            "failure_reason": deployment.failure_reason,
            "build_log": build.log[-20000:] if build else "",
            "build_status": build.status if build else None,
            "events": [
                {"at": e.created_at.isoformat(), "message": e.message}
                for e in deployment.events.all()[:20]
            ],
            "replicas": [
                {"name": r.name, "healthy": r.healthy, "state": r.state}
                | ({"endpoint": r.endpoint} if show_endpoints else {})
                for r in deployment.replica_set.all()
            ],
        }
    )


@require_POST
@capability_required("deploy")
def deployment_create(request: HttpRequest, model_name: str, number: int) -> HttpResponse:
    version = model_selectors.version_get(model_name=model_name, number=number)
    form = DeployForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            deployment = services.deployment_launch(
                version=version,
                name=data["name"],
                actor=Actor.from_request(request),
                user=request.user,
                runtime=data["runtime"],
                replicas=data["replicas"],
                memory_mb=data["memory_mb"],
                cpus=data["cpus"],
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Deployment '{deployment.name}' launched: building now.")
            return redirect("deployment-detail", deployment.name)
    else:
        for field, errors in form.errors.items():
            messages.error(request, f"{field}: {' '.join(errors)}")
    return redirect("version-detail", model_name, number)


@require_POST
@capability_required("deploy")
def deployment_action(request: HttpRequest, name: str, action: str) -> HttpResponse:
    deployment = selectors.deployment_get(name=name)
    actor = Actor.from_request(request)
    try:
        if action == "delete":
            services.deployment_delete(deployment=deployment, actor=actor)
            messages.success(request, f"Deployment '{name}' deleted.")
            return redirect("deployment-list")
        extra = {}
        if action == "scale":
            form = ScaleForm(request.POST)
            if not form.is_valid():
                raise ApplicationError("replicas must be between 1 and 8")
            extra["replicas"] = form.cleaned_data["replicas"]
        if action == "update":
            form = UpdateForm(request.POST)
            if not form.is_valid():
                raise ApplicationError("choose a version")
            extra["version"] = form.cleaned_data["version"]
        run_action(deployment=deployment, actor=actor, action=action, **extra)
        messages.success(request, f"{action.capitalize()} requested.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("deployment-detail", name)
