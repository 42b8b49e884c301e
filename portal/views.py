"""Core pages: dashboard, health, audit review."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.cache import cache
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from portal import registry, selectors
from portal.audit import Actor, audit_record, audit_verify, client_ip
from portal.health import run_checks
from portal.models import AuditEvent
from portal.permissions import capability_required
from portal.roles import user_can

AUDIT_PAGE_SIZE = 50
EXPORT_CHUNK = 2000


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Checks nothing else, by design."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: every dependency answers (200) or not (503).

    The checks' details (paths, hosts, errors) are shown only where metrics are (allowed
    addresses, admins): anyone else learns ready or not, and nothing about the setup.
    """
    checks = run_checks()
    ready = all(c["ok"] for c in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
    if client_ip(request) in settings.PORTAL_METRICS_ALLOW or user_can(request.user, "admin"):
        body["checks"] = checks
    return JsonResponse(body, status=200 if ready else 503)


# ------------------------------------------------------------------------------ dashboard


def _dashboard_context(request: HttpRequest, *, live_only: bool = False) -> dict[str, Any]:
    """The apps' panels (portal.registry) and the core's own worker health."""
    return registry.dashboard_context(request, live_only=live_only) | {
        "health": selectors.worker_health()
    }


@require_GET
@capability_required("view")
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/home.html", _dashboard_context(request))


@require_GET
@never_cache
@capability_required("view")
def dashboard_data(request: HttpRequest) -> JsonResponse:
    """What the dashboard polls: the live fragment, and what the panels add (chart series)."""
    context = _dashboard_context(request, live_only=True)
    health = context["health"]
    return JsonResponse(
        {
            "html": render_to_string("portal/_dashboard_live.html", context, request=request),
            "health": {
                "alive": health["alive"],
                "workers": health["workers"],
                "queue_length": health["queue_length"],
                "reconcile_last": health["reconcile_last"],
            },
        }
        | registry.poll_data(request, context)
    )


# ---------------------------------------------------------------------------- audit review


class AuditFilterForm(forms.Form):
    """Shape of the audit filters; the same fields filter events and prediction calls."""

    OUTCOMES = [("", "any outcome")] + list(AuditEvent.Outcome.choices)

    tab = forms.CharField(required=False, max_length=30)  # a registered tab; else the first
    actor = forms.CharField(required=False, max_length=150)
    action = forms.CharField(required=False, max_length=100)
    target = forms.CharField(required=False, max_length=255)
    deployment = forms.CharField(required=False, max_length=63)
    outcome = forms.ChoiceField(choices=OUTCOMES, required=False)
    since = forms.DateField(required=False)
    until = forms.DateField(required=False)
    q = forms.CharField(required=False, max_length=200)


def _audit_filters(
    request: HttpRequest,
) -> tuple[AuditFilterForm, dict[str, Any], registry.AuditTab]:
    form = AuditFilterForm(request.GET)
    if form.is_valid():
        filters = {k: v for k, v in form.cleaned_data.items() if v not in (None, "")}
    else:
        # Keep what parsed; a bad date should not hide the whole log.
        filters = {
            k: v for k, v in getattr(form, "cleaned_data", {}).items() if v not in (None, "")
        }
    return form, filters, registry.audit_tab(filters.pop("tab", None))


@require_GET
@capability_required("audit")
def audit_list(request: HttpRequest) -> HttpResponse:
    form, filters, tab = _audit_filters(request)
    page = Paginator(tab.queryset(filters), AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "portal/audit_list.html",
        {
            "form": form,
            "filters": request.GET,
            "tabs": registry.audit_tabs(),
            "tab": tab.name,
            "tab_def": tab,
            "page": page,
            "verification": selectors.audit_last_verification(),
        }
        | (tab.context() if tab.context else {}),
    )


EVENT_COLUMNS = (
    "id",
    "created_at",
    "actor_name",
    "action",
    "target_type",
    "target_id",
    "target_name",
    "outcome",
    "request_id",
    "client_ip",
    "details",
    "prev_hash",
    "hash",
)


class _Echo:
    """A file-like object whose write returns the line, for csv.writer in a generator."""

    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True, default=str)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    # Spreadsheets run cells starting with these as formulas; a log must not carry one.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_rows(header: Iterable[str], rows: Iterable[tuple]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([_cell(v) for v in row])


@require_GET
@capability_required("audit")
def audit_export(request: HttpRequest) -> StreamingHttpResponse:
    """The filtered rows as CSV, streamed: memory stays flat however many rows match."""
    _, filters, tab = _audit_filters(request)
    columns = tab.columns
    rows = tab.queryset(filters).values_list(*columns).iterator(chunk_size=EXPORT_CHUNK)
    audit_record(
        actor=Actor.from_request(request),
        action="audit.exported",
        target_type="audit",
        target_name=tab.name,
        details={"filters": {k: str(v) for k, v in filters.items()}},
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(_csv_rows(columns, rows), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="portal-{tab.name}-{stamp}.csv"'
    return response


@require_POST
@capability_required("audit")
def audit_verify_run(request: HttpRequest) -> HttpResponse:
    """Walk the hash chain now and keep the result for the page."""
    report = audit_verify()
    actor = Actor.from_request(request)
    cache.set(
        selectors.AUDIT_VERIFY_KEY,
        selectors.audit_verification_payload(report, by=actor.name),
        timeout=None,
    )
    if report.ok:
        messages.success(request, f"Audit chain intact: {report.checked} events verified.")
    else:
        messages.error(
            request,
            f"Audit chain broken at event {report.broken_id}: {report.reason}.",
        )
    audit_record(
        actor=actor,
        action="audit.verified",
        target_type="audit",
        target_name="chain",
        outcome=AuditEvent.Outcome.SUCCESS if report.ok else AuditEvent.Outcome.FAILURE,
        details={"checked": report.checked, "broken_id": report.broken_id},
    )
    return redirect("audit-list")
