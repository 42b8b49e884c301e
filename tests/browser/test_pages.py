"""The pages in a real browser: dashboard, audit review, and what a viewer may not do."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse

from portal import selectors
from portal.models import AuditEvent
from tests.browser.conftest import login
from tests.portal.test_dashboard import log_calls, make_deployment

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def workers(monkeypatch):
    """Which workers answer the ping (the live server runs in this process)."""
    state = {"workers": ["w1@test"]}
    monkeypatch.setattr(
        selectors,
        "_ping_workers",
        lambda: {"workers": list(state["workers"]), "broker_ok": True, "broker_error": ""},
    )
    return state


@pytest.fixture(autouse=True)
def _private_cache(settings, tmp_path):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": str(tmp_path),
        }
    }


def test_admin_sees_the_live_dashboard(page, make_user, workers, shot):
    make_deployment("house", replicas=2, healthy=2)
    make_deployment("iris", state="degraded", replicas=2, healthy=1)
    log_calls("house", [float(i % 40 + 5) for i in range(300)], errors=6)
    log_calls("house", [12.0] * 40, ago=timedelta(minutes=25))
    log_calls("iris", [30.0, 45.0, 80.0] * 20, ago=timedelta(minutes=12), errors=3)
    log_calls("iris", [20.0] * 100, ago=timedelta(hours=20))
    login(page, make_user("admin"))

    page.goto("/")
    assert page.locator("h1").inner_text() == "Dashboard"
    card = page.locator('[data-deployment="house"]')
    assert "2/2 healthy" in card.inner_text()
    assert "house-model v1" in card.inner_text()
    assert page.locator('[data-deployment="iris"] header .badge.degraded').count() == 1
    assert page.locator("#worker-banner").count() == 0
    # Chart.js drew on both canvases.
    page.wait_for_function(
        "() => Chart.getChart('chart-requests') && Chart.getChart('chart-latency')"
    )
    assert (
        page.evaluate("Chart.getChart('chart-requests').data.datasets[0].data.reduce((a,b)=>a+b,0)")
        == 400
    )
    shot(page, "dashboard")

    # The range picker and new data refresh the page in place, without a reload.
    page.evaluate("window.__sameDocument = true")
    make_deployment("spam", state="building", replicas=1, healthy=0)
    page.click("button[data-range=day]")
    page.wait_for_selector('[data-deployment="spam"]')
    page.wait_for_function(
        "() => Chart.getChart('chart-requests').data.datasets[0].data.reduce((a,b)=>a+b,0) === 500"
    )
    assert "range=day" in page.url
    assert page.evaluate("window.__sameDocument") is True
    page.select_option("#chart-deployment", "iris")
    page.wait_for_function(
        "() => Chart.getChart('chart-requests').data.datasets[0].data.reduce((a,b)=>a+b,0) === 160"
    )
    assert "deployment=iris" in page.url
    shot(page, "dashboard-day-iris")
    assert page.js_errors == []


def test_dashboard_shows_a_red_banner_when_no_worker_answers(page, make_user, workers, shot):
    workers["workers"] = []
    login(page, make_user("viewer"))
    page.goto("/")
    banner = page.locator("#worker-banner")
    assert banner.is_visible()
    assert "No Celery worker answers" in banner.inner_text()
    shot(page, "dashboard-no-worker")


def test_admin_filters_the_audit_log_exports_csv_and_verifies_the_chain(
    page, make_user, workers, shot
):
    from portal.audit import Actor, audit_record

    for i in range(60):
        audit_record(actor=Actor(None, "alice"), action=f"model.step{i}", target_name="house")
    audit_record(actor=Actor(None, "bob"), action="deployment.stopped", target_name="house")
    make_deployment("house")
    log_calls("house", [10.0] * 5)
    log_calls("house", [10.0] * 2, errors=2)
    admin = make_user("admin")
    login(page, admin)

    page.click("nav >> text=Audit")
    page.wait_for_url("**/audit/")
    assert "page 1 of 2" in page.locator(".pager").inner_text()
    shot(page, "audit-events")

    page.fill("input[name=actor]", "bob")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_url("**actor=bob**")
    rows = page.locator("#events tbody tr")
    assert rows.count() == 1 and "deployment.stopped" in rows.first.inner_text()

    with page.expect_download() as info:
        page.click("#export-csv")
    download = info.value
    assert download.suggested_filename.startswith("portal-events-")
    body = list(csv.reader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert body[0][3] == "action"
    assert [r[3] for r in body[1:]] == ["deployment.stopped"]

    page.click("#tab-calls")
    page.fill("input[name=actor]", "")  # the tabs keep the filters they share
    page.select_option("select[name=deployment]", "house")
    page.select_option("select[name=outcome]", "failure")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_url("**outcome=failure**")
    assert page.locator("#calls tbody tr").count() == 2
    shot(page, "audit-calls")
    with page.expect_download() as info:
        page.click("#export-csv")
    calls = list(csv.reader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8"))))
    assert len(calls) == 3 and {r[7] for r in calls[1:]} == {"500"}

    page.click("#verify-chain")
    page.wait_for_selector("#chain-status.ok")
    assert "Audit chain intact" in page.locator(".messages").inner_text()
    shot(page, "audit-verified")
    assert (
        AuditEvent.objects.filter(action="audit.exported", actor_name=admin.username).count() == 2
    )
    assert page.js_errors == []


def test_viewer_sees_no_upload_or_deploy_controls_and_is_refused(page, make_user, workers, shot):
    deployment = make_deployment("house")
    log_calls("house", [8.0] * 3)
    login(page, make_user("viewer"))

    page.goto("/")
    assert page.locator("nav >> text=Upload").count() == 0
    assert page.locator("nav >> text=Audit").count() == 0

    version_url = reverse("version-detail", args=[deployment.model.name, deployment.version.number])
    page.goto(version_url)
    assert page.get_by_role("button", name="Deploy").count() == 0

    page.goto(reverse("deployment-detail", args=["house"]))
    for name in ("Stop", "Start", "Restart", "Scale", "Delete"):
        assert page.get_by_role("button", name=name).count() == 0
    assert page.locator("#try-form").count() == 0
    assert page.locator("#latest-calls tbody tr").count() == 3
    shot(page, "deployment-viewer")

    for url in (reverse("model-upload"), reverse("audit-list")):
        assert page.goto(url).status == 403
    shot(page, "viewer-403")

    # The POST endpoints behind the hidden buttons refuse too (a valid CSRF token is sent).
    page.goto("/")
    statuses = page.evaluate(
        """async (urls) => {
          const token = document.querySelector("input[name=csrfmiddlewaretoken]").value;
          const out = [];
          for (const url of urls) {
            const r = await fetch(url, {method: "POST", headers: {"X-CSRFToken": token},
                                        body: new URLSearchParams({name: "x", replicas: "1"})});
            out.push(r.status);
          }
          return out;
        }""",
        [
            reverse("deployment-create", args=[deployment.model.name, deployment.version.number]),
            reverse("deployment-action", args=["house", "stop"]),
            reverse("deployment-action", args=["house", "delete"]),
            reverse("model-upload"),
            reverse("audit-verify"),
        ],
    )
    assert statuses == [403, 403, 403, 403, 403]
    deployment.refresh_from_db()
    assert deployment.desired_state == "running"
