"""The deployment page's Rollout and Shadow sections (issue 15): the table of stable and
candidates, step and bake timer, the decision of a rollback, the shadow report; the forms
for deployers (POST, redirect, GET with a message; refusals shown, never a 500)."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.utils import timezone

from deployments_app.models import Deployment, Replica, Rollout, ShadowPair
from portal.models import AuditEvent
from tests.deployments_app.test_rollout_api import make_world, queued  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db
PAGE = "/deployments/dep/"


@pytest.fixture
def world():
    return make_world()


def _post(client, path, data):
    response = client.post(path, data, follow=True)
    assert response.status_code == HTTPStatus.OK
    assert response.redirect_chain[-1][0].startswith(PAGE)
    return response.content.decode()


def test_page_without_a_rollout_offers_the_forms_to_deployers_only(role_client, world):
    html = role_client("deployer").get(PAGE).content.decode()
    assert 'id="rollout"' in html and "No rollout yet: every call goes to v1." in html
    assert 'data-action="rollout-set"' in html and 'data-action="shadow-set"' in html
    assert '<option value="2"' in html and '<option value="3"' in html
    viewer = role_client("viewer").get(PAGE).content.decode()
    assert 'id="rollout-table"' in viewer and "Shadow traffic" in viewer
    assert 'data-action="rollout-set"' not in viewer and 'data-action="shadow-set"' not in viewer


def test_start_a_linear_rollout_from_the_page_then_promote(role_client, world):
    client = role_client("deployer")
    html = _post(
        client,
        "/deployments/dep/rollout",
        {"version": "2", "weight": "10", "plan": "linear", "steps": "10, 50",
         "bake_seconds": "300", "auto_promote": "on", "sticky_header": "X-User"},
    )  # fmt: skip
    assert "Rollout" in html and "v2 set." in html
    rollout = Rollout.objects.get()
    assert rollout.steps == [10, 50] and rollout.auto_promote and rollout.sticky_header == "X-User"
    assert "step 1 of 2, 10%" in html
    assert "s left</span> of 300 s" in html
    assert "sticky by <code>X-User</code>" in html
    assert 'data-action="rollout-promote"' in html and 'data-action="rollout-abort"' in html
    assert AuditEvent.objects.filter(action="rollout.started").count() == 1
    html = _post(client, "/deployments/dep/rollout/promote", {})
    assert "v2 promoted to stable." in html
    assert Deployment.objects.get().version.number == 2
    assert AuditEvent.objects.filter(action="rollout.promoted").count() == 1


def test_change_and_abort_from_the_page(role_client, world):
    client = role_client("deployer")
    _post(client, "/deployments/dep/rollout",
          {"version": "2", "weight": "10", "plan": "manual", "bake_seconds": "60"})  # fmt: skip
    _post(client, "/deployments/dep/rollout",
          {"version": "3", "weight": "25", "plan": "manual", "bake_seconds": "60"})  # fmt: skip
    assert AuditEvent.objects.filter(action="rollout.changed").count() == 1
    html = _post(client, "/deployments/dep/rollout/abort", {"reason": "too slow"})
    assert "Rollout aborted" in html and "too slow" in html
    assert Rollout.objects.get().status == "aborted"
    assert AuditEvent.objects.filter(action="rollout.aborted").count() == 1


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"version": "2", "weight": "150", "plan": "manual", "bake_seconds": "60"}, "weight"),
        ({"version": "9", "weight": "10", "plan": "manual", "bake_seconds": "60"}, "no version 9"),
        ({"version": "x", "weight": "10", "plan": "manual", "bake_seconds": "60"}, "version"),
        ({"version": str(2**40), "weight": "10", "plan": "manual", "bake_seconds": "60"},
         "version"),
        ({"version": "2", "weight": "10", "plan": "linear", "steps": "10,abc",
          "bake_seconds": "60"}, "steps"),
        ({"version": "2", "weight": "10", "plan": "linear", "steps": "50,10",
          "bake_seconds": "60"}, "rising"),
        ({"version": "1", "weight": "10", "plan": "manual", "bake_seconds": "60"}, "stable"),
        ({}, "version"),
    ],
)  # fmt: skip
def test_bad_rollout_forms_show_the_reason_and_change_nothing(role_client, world, data, needle):
    html = _post(role_client("deployer"), "/deployments/dep/rollout", data)
    assert 'class="msg error' in html or "msg error" in html
    assert needle in html
    assert not Rollout.objects.exists()


def test_commands_on_a_stopped_deployment_are_refused_on_the_page(role_client, world):
    Deployment.objects.filter(pk=world.pk).update(state="stopped")
    client = role_client("deployer")
    form = {"version": "2", "weight": "10", "plan": "manual", "bake_seconds": "60"}
    html = _post(client, "/deployments/dep/rollout", form)
    assert "rollouts need it running" in html
    html = _post(client, "/deployments/dep/rollout/promote", {})
    assert "no active rollout" in html


def test_viewers_may_not_post_the_forms(role_client, world):
    client = role_client("viewer")
    for path in ("rollout", "rollout/promote", "rollout/abort", "shadow"):
        response = client.post(f"/deployments/dep/{path}", {"version": "2", "weight": "10"})
        assert response.status_code == HTTPStatus.FORBIDDEN
    assert not Rollout.objects.exists()


def test_a_rolled_back_rollout_shows_its_verdict_and_metrics(role_client, world):
    _post(role_client("deployer"), "/deployments/dep/rollout",
          {"version": "2", "weight": "10", "plan": "canary", "bake_seconds": "60"})  # fmt: skip
    decision = {
        "at": "2026-01-01T00:00:00+00:00",
        "metrics": {
            "stable": {"version": 1, "samples": 400, "errors": 2, "error_rate": 0.005,
                       "p95_ms": 12.5},
            "v2": {"samples": 150, "errors": 30, "error_rate": 0.2, "p95_ms": 80.0, "weight": 10},
        },
        "breaches": {"2": ["error rate 20.00% > 5.00%"]},
    }  # fmt: skip
    Rollout.objects.update(
        status="rolled_back", verdict="breach: v2: error rate", decision=decision
    )
    html = role_client("viewer").get(PAGE).content.decode()
    assert "breach: v2: error rate" in html and "What rolled it back" in html
    assert "20.00%" in html and "0.50%" in html and "80.0 ms" in html and "12.5 ms" in html
    assert "v2: error rate 20.00% &gt; 5.00%" in html


def test_the_status_poll_carries_the_rollout_part(role_client, world):
    client = role_client("deployer")
    _post(client, "/deployments/dep/rollout",
          {"version": "2", "weight": "30", "plan": "manual", "bake_seconds": "60"})  # fmt: skip
    Replica.objects.filter(version_number=2).update(healthy=False)
    html = client.get("/deployments/dep/status").json()["html"]["rollout"]
    assert 'id="rollout-table"' in html and "30%" in html
    assert "0 (its share goes to stable)" in html


def test_shadow_set_report_and_off_from_the_page(role_client, world):
    client = role_client("deployer")
    html = _post(client, "/deployments/dep/shadow", {"version": "3", "percent": "20"})
    assert "Shadow: v3 gets a copy of 20% of calls." in html
    assert AuditEvent.objects.filter(action="deployment.shadow_set").count() == 1
    now = timezone.now()
    ShadowPair.objects.bulk_create(
        ShadowPair(deployment_name="dep", created_at=now, primary_version=1, shadow_version=3,
                   primary_ms=10.0, shadow_ms=30.0, shadow_status=200,
                   primary={"predictions": [1], "probabilities": [[0.1, 0.9]]},
                   shadow={"predictions": [1], "probabilities": [[0.3, 0.7]]})
        for _ in range(4)
    )  # fmt: skip
    html = client.get(PAGE).content.decode()
    assert 'id="shadow-report"' in html and "100.00%" in html  # label agreement
    assert 'id="chart-shadow"' in html and 'id="shadow-series"' in html
    assert 'data-action="shadow-off"' in html
    html = _post(client, "/deployments/dep/shadow", {"off": "1"})
    assert "Shadow traffic off." in html
    assert Deployment.objects.get().shadow_version is None
    assert AuditEvent.objects.filter(action="deployment.shadow_cleared").count() == 1


@pytest.mark.parametrize(
    "data", [{"version": "3", "percent": "0"}, {"version": "9", "percent": "10"}, {}]
)
def test_bad_shadow_forms_show_the_reason(role_client, world, data):
    html = _post(role_client("deployer"), "/deployments/dep/shadow", data)
    assert "msg error" in html
    assert Deployment.objects.get().shadow_version is None
