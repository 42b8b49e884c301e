"""The core offers places on its pages (portal.registry) and knows no app itself."""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest
from django.urls import reverse

from portal import registry, selectors

PORTAL = Path(__file__).resolve().parents[2] / "portal"
# The project's wiring (settings, URLs, the servers' entry points) names the apps by design.
WIRING = {"settings.py", "urls.py", "asgi.py", "wsgi.py", "celery.py"}
APPS = ("deployments_app", "models_app")


def test_the_core_imports_no_app_and_names_no_app_model():
    offenders = []
    for path in sorted(PORTAL.rglob("*.py")):
        if path.name in WIRING or "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get_model":
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            offenders += [
                f"{path.relative_to(PORTAL.parent)}:{node.lineno} {n}"
                for n in names
                if str(n).split(".")[0] in APPS
            ]
    assert offenders == []


@pytest.fixture(autouse=True)
def _private_cache(settings, monkeypatch):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"registry-{uuid.uuid4().hex}",
        }
    }
    monkeypatch.setattr(
        selectors,
        "_ping_workers",
        lambda: {"workers": ["w1@host"], "broker_ok": True, "broker_error": ""},
    )


@pytest.fixture
def extra_panel(monkeypatch, tmp_path, settings):
    """A panel of a would-be app, registered as an app would in ready()."""
    (tmp_path / "extra_panel.html").write_text('<p id="extra">{{ extra_count }} extra</p>')
    settings.TEMPLATES = [
        dict(settings.TEMPLATES[0], DIRS=[*settings.TEMPLATES[0]["DIRS"], str(tmp_path)])
    ]
    monkeypatch.setattr(registry, "_PANELS", dict(registry._PANELS))
    seen = []

    def context(request):
        seen.append(request.GET.get("range"))
        return {"extra_count": 42}

    registry.register_panel(
        registry.Panel(
            name="extra",
            template="extra_panel.html",
            context=context,
            order=50,
            poll=lambda request, ctx: {"extra": ctx["extra_count"]},
        )
    )
    return seen


@pytest.mark.django_db
def test_a_registered_panel_is_on_the_dashboard_and_in_its_poll(role_client, extra_panel):
    client = role_client("viewer")
    html = client.get(reverse("home"), {"range": "day"}).content.decode()
    assert '<p id="extra">42 extra</p>' in html
    # In order: after the deployments' overview (10), before the core's worker health.
    assert html.index('id="counts"') < html.index('id="extra"') < html.index('id="health"')

    data = client.get(reverse("dashboard-data"), {"range": "week"}).json()
    assert '<p id="extra">42 extra</p>' in data["html"]
    assert data["extra"] == 42
    assert data["summary"]["models"] == 0 and data["series"]["range"] == "week"
    assert data["health"]["alive"] is True
    assert extra_panel == ["day", "week"]  # the panel's context is computed once per request


@pytest.mark.django_db
def test_audit_tabs_come_from_the_registry_and_an_unknown_tab_is_the_first(role_client):
    assert [t.name for t in registry.audit_tabs()] == ["events", "calls"]
    client = role_client("admin")
    html = client.get(reverse("audit-list"), {"tab": "nonsense"}).content.decode()
    assert 'id="tab-events"' in html and 'id="tab-calls"' in html
    assert 'id="events"' in html and 'id="calls"' not in html
    calls = client.get(reverse("audit-list"), {"tab": "calls"}).content.decode()
    assert 'id="calls"' in calls and 'name="deployment"' in calls
    export = client.get(reverse("audit-export"), {"tab": "calls"})
    header = b"".join(export.streaming_content).decode().splitlines()[0]
    assert header.split(",")[:3] == ["id", "created_at", "deployment_name"]


@pytest.mark.django_db
def test_the_dashboard_shows_each_deployments_worst_drifting_feature(role_client):
    from django.utils import timezone

    from deployments_app.models import DriftSnapshot
    from tests.portal.test_dashboard import make_deployment

    client = role_client("viewer")
    assert 'id="drift-cards"' not in client.get(reverse("home")).content.decode()
    deployment = make_deployment("drifting")
    now = timezone.now()
    for feature, psi in (("area", 0.9), ("rooms", 0.05)):
        DriftSnapshot.objects.create(
            deployment=deployment,
            version_number=1,
            window_start=now,
            window_end=now,
            feature=feature,
            kind="number",
            psi=psi,
        )
    html = client.get(reverse("dashboard-data")).json()["html"]
    card = html[html.index('id="drift-cards"') :]
    assert 'data-deployment="drifting"' in card and "<code>area</code>" in card
    assert html.index('id="counts"') < html.index('id="drift-cards"') < html.index('id="health"')
