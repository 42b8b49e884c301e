"""Deployment pages: list, detail (live build log and state), deploy and action forms."""

from __future__ import annotations

import json
from datetime import timedelta
from functools import partial

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.context_processors import csrf
from django.template.loader import get_template
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from deployments_app import buildlog, panels, rollouts, selectors, services, stats, transitions
from deployments_app.api.views import run_action
from deployments_app.forms import (
    AbortForm,
    DeployForm,
    PromoteForm,
    RolloutForm,
    ScaleForm,
    ShadowForm,
    UpdateForm,
)
from models_app import selectors as model_selectors
from portal import tables
from portal.audit import Actor
from portal.context_processors import roles
from portal.errors import ApplicationError
from portal.permissions import capability_required
from portal.roles import user_can

LIST_COLUMNS = {
    "name": ("name",),
    "state": ("state",),
    "model": ("model__name", "version__number"),
    "replicas": ("replicas",),
    "runtime": ("runtime",),
    "since": ("state_changed_at",),
}


@require_GET
@capability_required("view")
def deployment_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "deployments_app/deployment_list.html",
        {
            "table": tables.table(
                request, selectors.deployment_list(), columns=LIST_COLUMNS, default="name"
            )
        },
    )


def _try_it_body(deployment) -> str:
    """The version's input example as a predict body, for the page's "try it" form."""
    example = deployment.version.input_example or {}
    rows = example.get("rows") if isinstance(example, dict) else None
    return json.dumps({"instances": rows or [[]]}, indent=2)


def _live_context(deployment) -> dict:
    """What the page's live parts show; the page and its poll render the same fragments."""
    build = deployment.builds.select_related("version").first()
    actions = transitions.allowed_actions(deployment)
    previous = deployment.previous_version.number if deployment.previous_version else ""
    other_versions = list(
        deployment.model.versions.filter(status="ready")
        .exclude(pk=deployment.version_id)
        .order_by("-number")
    )
    return {
        "deployment": deployment,
        "actions": actions,
        # The poll swaps the buttons only when this changes, so it never clobbers a choice
        # being made in the scale or update form.
        "actions_key": f"{deployment.state}:{deployment.version.number}:{previous}:"
        f"{deployment.replicas}:{','.join(sorted(actions))}:"
        f"{','.join(str(v.number) for v in other_versions)}",
        "build": build,
        "build_key": f"{build.pk}:{build.status}:{len(build.log)}" if build else "",
        # Lazy (templates call it): a poll whose log is unchanged never cuts it up.
        "log_segments": partial(buildlog.segments, build.log) if build else [],
        "build_error": buildlog.hide_paths(build.error) if build and build.error else "",
        "events": deployment.events.all()[:50],
        "replicas": deployment.replica_set.all(),
        "other_versions": other_versions,
        "stats": stats.deployment_call_stats(deployment_name=deployment.name).get(
            deployment.name, stats.CallStats()
        ),
        "calls": stats.recent_predictions(deployment_name=deployment.name),
        "rollout": selectors.rollout_status(deployment),
    }


@require_GET
@capability_required("view")
def deployment_detail(request: HttpRequest, name: str) -> HttpResponse:
    deployment = selectors.deployment_get(name=name)
    return render(
        request,
        "deployments_app/deployment_detail.html",
        _live_context(deployment)
        | {
            "series": stats.prediction_series(deployment_name=deployment.name),
            "ranges": list(stats.RANGES),
            "try_it_body": _try_it_body(deployment),
            "rollout_form": RolloutForm(),
        }
        | _shadow_context(deployment),
    )


SHADOW_REPORT_MINUTES = 60


def _shadow_context(deployment) -> dict:
    since = timezone.now() - timedelta(minutes=SHADOW_REPORT_MINUTES)
    return {
        "shadow_report": rollouts.shadow_report(deployment=deployment, since=since),
        "shadow_series": selectors.shadow_latency_series(
            deployment_name=deployment.name, since=since
        ),
        "shadow_minutes": SHADOW_REPORT_MINUTES,
    }


LIVE_PARTS = {
    "summary": "deployments_app/_summary.html",
    "actions": "deployments_app/_actions.html",
    "stats": "deployments_app/_stats.html",
    "calls": "deployments_app/_calls.html",
    "replicas": "deployments_app/_replicas.html",
    "events": "deployments_app/_events.html",
    "build": "deployments_app/_build_log.html",
    "rollout": "deployments_app/_rollout.html",
}


def _render_parts(request: HttpRequest, context: dict, *, skip: set[str]) -> dict[str, str]:
    """The live fragments, with the context processors' values computed once for all of
    them (render_to_string with a request would run them, and their queries, per fragment)."""
    shared = context | csrf(request) | roles(request) | {"request": request, "user": request.user}
    return {
        part: get_template(template).render(shared)
        for part, template in LIVE_PARTS.items()
        if part not in skip
    }


@require_GET
@capability_required("view")
def deployment_status(request: HttpRequest, name: str) -> JsonResponse:
    """What the page polls: state and version, and its live parts rendered as HTML."""
    deployment = selectors.deployment_get(name=name)
    context = _live_context(deployment)
    build = context["build"]
    show_endpoints = user_can(request.user, "replica_endpoints")
    # The page sends the keys of the buttons and log it shows; unchanged parts are not sent
    # again (a long build log is most of the answer's size and rendering time).
    unchanged = {
        part
        for part, key in (("actions", "actions_key"), ("build", "build_key"))
        if request.GET.get(part) == context[key]
    }
    skip = unchanged | (set() if user_can(request.user, "deploy") else {"actions"})
    return JsonResponse(
        {
            "state": deployment.state,
            "version": deployment.version.number,
            "previous_version": (
                deployment.previous_version.number if deployment.previous_version else None
            ),
            "replicas_wanted": deployment.replicas,
            "failure_reason": deployment.failure_reason,
            "actions": sorted(context["actions"]),
            "actions_key": context["actions_key"],
            "build_key": context["build_key"],
            "build_log": (
                buildlog.hide_paths(build.log[-20000:]) if build and "build" not in skip else None
            ),
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
            "html": _render_parts(request, context, skip=skip),
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
                batch_max_size=data["batch_max_size"] or 0,
                batch_max_wait_ms=data["batch_max_wait_ms"] or 0.0,
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


# --------------------------------------------------------------------------- rollouts


def _form_errors(form) -> str:
    return "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())


@require_POST
@capability_required("deploy")
def deployment_rollout(request: HttpRequest, name: str, op: str = "set") -> HttpResponse:
    """The rollout forms: start or change (set), promote, abort; POST, redirect, GET."""
    deployment = selectors.deployment_get(name=name)
    actor = Actor.from_request(request)
    form_class = {"set": RolloutForm, "promote": PromoteForm, "abort": AbortForm}[op]
    form = form_class(request.POST)
    try:
        if not form.is_valid():
            raise ApplicationError(_form_errors(form))
        data = form.cleaned_data
        if op == "set":
            rollout = rollouts.rollout_set(
                deployment=deployment,
                candidates=[rollouts.CandidateSpec(data["version"], data["weight"])],
                actor=actor,
                plan=data["plan"],
                steps=data["steps"],
                bake_seconds=data["bake_seconds"],
                auto_promote=data["auto_promote"],
                sticky_header=data["sticky_header"],
            )
            messages.success(request, f"Rollout {rollout.pk}: v{data['version']} set.")
        elif op == "promote":
            deployment = rollouts.rollout_promote(
                deployment=deployment, actor=actor, version=data["version"]
            )
            messages.success(request, f"v{deployment.version.number} promoted to stable.")
        else:
            rollouts.rollout_abort(deployment=deployment, actor=actor, reason=data["reason"])
            messages.success(request, "Rollout aborted: every call goes to the stable version.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect(reverse("deployment-detail", args=[name]) + "#rollout")


@require_POST
@capability_required("deploy")
def deployment_shadow(request: HttpRequest, name: str) -> HttpResponse:
    """Set the shadow version and share, or (the "off" button) turn shadow traffic off."""
    deployment = selectors.deployment_get(name=name)
    actor = Actor.from_request(request)
    try:
        if "off" in request.POST:
            rollouts.shadow_set(deployment=deployment, version=None, percent=0, actor=actor)
            messages.success(request, "Shadow traffic off.")
        else:
            form = ShadowForm(request.POST)
            if not form.is_valid():
                raise ApplicationError(_form_errors(form))
            rollouts.shadow_set(deployment=deployment, actor=actor, **form.cleaned_data)
            messages.success(
                request,
                f"Shadow: v{form.cleaned_data['version']} gets a copy of "
                f"{form.cleaned_data['percent']}% of calls.",
            )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect(reverse("deployment-detail", args=[name]) + "#shadow")


@require_GET
@never_cache
@capability_required("view")
def metrics_series(request: HttpRequest) -> JsonResponse:
    """Chart series only, for one deployment or the whole portal (the deployment page)."""
    return JsonResponse(panels.charts_context(request)["series"])
