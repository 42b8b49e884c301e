"""Core pages: home, health, audit review."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from portal import selectors
from portal.health import run_checks
from portal.permissions import capability_required


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Checks nothing else, by design."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: every dependency answers. 503 names the failing checks."""
    checks = run_checks()
    ready = all(c["ok"] for c in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


@capability_required("view")
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/home.html", {"summary": selectors.portal_summary()})


@capability_required("audit")
def audit_list(request: HttpRequest) -> HttpResponse:
    events = selectors.audit_event_list(filters=request.GET)
    return render(
        request, "portal/audit_list.html", {"events": events[:200], "filters": request.GET}
    )
