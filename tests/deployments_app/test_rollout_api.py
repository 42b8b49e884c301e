"""Rollouts and shadow traffic over the API (issue 15): status with live shares, start and
change, promote, abort, shadow set/clear and report; 400 for bad input, 403 for viewers,
409 when the deployment is not running. No Docker: queued replica work is recorded."""

from __future__ import annotations

from datetime import timedelta
from http import HTTPStatus

import pytest
from django.utils import timezone

from deployments_app import services
from deployments_app.models import Deployment, PredictionLog, Replica, Rollout, ShadowPair
from models_app.models import ModelVersion, RegisteredModel
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db
URL = "/api/v1/deployments/dep"


@pytest.fixture(autouse=True)
def queued(monkeypatch):
    """The services queue `tasks.rollout_replicas` on commit; here nothing starts containers."""
    calls: list[tuple] = []
    monkeypatch.setattr(services, "_enqueue", lambda *args, **kw: calls.append((args, kw)))
    return calls


def make_world(*, state: str = "running", versions: int = 3) -> Deployment:
    """A running deployment of v1 with a healthy replica of every approved version."""
    model = RegisteredModel.objects.create(name="dep-model")
    made = [
        ModelVersion.objects.create(
            model=model,
            number=n,
            status="ready",
            approval=ModelVersion.Approval.APPROVED,
            artifact_sha256=f"{n:064x}",
            artifact_size=1,
            schema={"classes": [0, 1]},
        )
        for n in range(1, versions + 1)
    ]
    deployment = Deployment.objects.create(
        name="dep", model=model, version=made[0], runtime="process", state=state
    )
    for i, version in enumerate(made):
        Replica.objects.create(
            deployment=deployment,
            name=f"portal-dep-{i}",
            index=i,
            version_number=version.number,
            endpoint="unix:/nonexistent",
            healthy=True,
            state="running",
        )
    return deployment


@pytest.fixture
def world(settings):
    settings.PORTAL_REQUIRE_APPROVAL = True  # the versions are approved, as in production
    return make_world()


def _log(version: int, n: int, *, status: int = 200, ago: timedelta = timedelta(minutes=1)):
    at = timezone.now() - ago
    PredictionLog.objects.bulk_create(
        PredictionLog(created_at=at, deployment_name="dep", version_number=version,
                      status_code=status, latency_ms=5.0)
        for _ in range(n)
    )  # fmt: skip


def test_get_without_a_rollout_shows_the_stable_version(api_client, world):
    response = api_client("viewer").get(f"{URL}/rollout")
    assert response.status_code == HTTPStatus.OK
    body = response.json()
    assert body["id"] is None and body["candidates"] == []
    assert body["stable"] == {"version": 1, "weight": 100, "healthy_replicas": 1, "live_share": 0.0}


def test_put_starts_a_canary_and_get_shows_weights_replicas_and_live_shares(
    api_client, world, queued
):
    _log(1, 90)
    _log(2, 10)
    _log(2, 50, status=500)  # not answered: no share
    _log(1, 500, ago=timedelta(minutes=10))  # outside the five minutes
    client = api_client("deployer")
    response = client.put(
        f"{URL}/rollout",
        {"candidates": [{"version": 2, "weight": 10}], "plan": "canary", "steps": [10],
         "bake_seconds": 120, "auto_promote": True, "guardrails": {"min_samples": 5},
         "sticky_header": "X-User"},
        format="json",
    )  # fmt: skip
    assert response.status_code == HTTPStatus.OK, response.content
    body = response.json()
    assert body["status"] == "active" and body["plan"] == "canary" and body["steps"] == [10]
    assert body["candidates"] == [
        {"version": 2, "weight": 10, "healthy_replicas": 1, "live_share": 0.1}
    ]
    assert body["stable"] == {"version": 1, "weight": 90, "healthy_replicas": 1, "live_share": 0.9}
    assert 115 <= body["bake_left_s"] <= 120
    assert body["guardrails"]["min_samples"] == 5 and body["guardrails"]["p95_ms"] == 250.0
    assert body["sticky_header"] == "X-User" and body["auto_promote"] is True
    again = client.get(f"{URL}/rollout").json()
    assert again["id"] == body["id"] and again["candidates"] == body["candidates"]
    event = AuditEvent.objects.get(action="rollout.started")
    assert event.details["weights"] == {"2": 10}
    assert queued and queued[-1][0][0] == "rollout_replicas"


def test_put_again_changes_the_active_rollout(api_client, world):
    client = api_client("deployer")
    first = client.put(f"{URL}/rollout", {"candidates": [{"version": 2, "weight": 10}]},
                       format="json").json()  # fmt: skip
    second = client.put(
        f"{URL}/rollout",
        {"candidates": [{"version": 2, "weight": 30}, {"version": 3, "weight": 20}]},
        format="json",
    )
    assert second.status_code == HTTPStatus.OK, second.content
    body = second.json()
    assert body["id"] == first["id"]
    assert [(c["version"], c["weight"]) for c in body["candidates"]] == [(2, 30), (3, 20)]
    assert body["stable"]["weight"] == 50
    assert AuditEvent.objects.filter(action="rollout.changed").count() == 1


def test_promote_makes_the_candidate_stable(api_client, world, queued):
    client = api_client("deployer")
    client.put(f"{URL}/rollout", {"candidates": [{"version": 2, "weight": 10}]}, format="json")
    response = client.post(f"{URL}/rollout/promote", {}, format="json")
    assert response.status_code == HTTPStatus.OK, response.content
    body = response.json()
    assert body["status"] == "promoted" and body["stable"]["version"] == 2
    assert body["bake_left_s"] is None
    world.refresh_from_db()
    assert world.version.number == 2 and world.previous_version.number == 1
    event = AuditEvent.objects.get(action="rollout.promoted")
    assert event.details["from_version"] == 1 and event.details["to_version"] == 2
    assert queued[-1][1] == {"drain": True}


def test_promote_of_two_candidates_needs_a_version(api_client, world):
    client = api_client("deployer")
    client.put(
        f"{URL}/rollout",
        {"candidates": [{"version": 2, "weight": 10}, {"version": 3, "weight": 10}]},
        format="json",
    )
    assert client.post(f"{URL}/rollout/promote", {}, format="json").status_code == 400
    response = client.post(f"{URL}/rollout/promote", {"version": 3}, format="json")
    assert response.status_code == HTTPStatus.OK, response.content
    assert response.json()["stable"]["version"] == 3


def test_promote_without_a_healthy_candidate_replica_is_409(api_client, world):
    client = api_client("deployer")
    client.put(f"{URL}/rollout", {"candidates": [{"version": 2, "weight": 10}]}, format="json")
    Replica.objects.filter(version_number=2).update(healthy=False)
    response = client.post(f"{URL}/rollout/promote", {}, format="json")
    assert response.status_code == HTTPStatus.CONFLICT
    assert "no healthy replica" in response.json()["error"]


def test_abort_sends_every_call_back_to_stable(api_client, world):
    client = api_client("deployer")
    client.put(f"{URL}/rollout", {"candidates": [{"version": 2, "weight": 40}]}, format="json")
    response = client.post(f"{URL}/rollout/abort", {"reason": "looks off"}, format="json")
    assert response.status_code == HTTPStatus.OK, response.content
    body = response.json()
    assert body["status"] == "aborted" and body["verdict"] == "looks off"
    assert body["candidates"][0]["weight"] == 0 and body["stable"]["weight"] == 100
    assert AuditEvent.objects.get(action="rollout.aborted").details["reason"] == "looks off"
    again = client.post(f"{URL}/rollout/abort", {}, format="json")
    assert again.status_code == HTTPStatus.CONFLICT


def test_get_shows_the_decision_of_a_rolled_back_rollout(api_client, world):
    api_client("deployer").put(
        f"{URL}/rollout", {"candidates": [{"version": 2, "weight": 10}]}, format="json"
    )
    rollout = Rollout.objects.get()
    decision = {"metrics": {"stable": {"version": 1, "samples": 200, "error_rate": 0.0},
                            "v2": {"samples": 120, "error_rate": 0.2}}}  # fmt: skip
    Rollout.objects.filter(pk=rollout.pk).update(
        status="rolled_back", verdict="breach: v2: error rate", decision=decision
    )
    body = api_client("viewer").get(f"{URL}/rollout").json()
    assert body["status"] == "rolled_back" and body["decision"] == decision


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"candidates": [{"version": 2, "weight": 60}, {"version": 3, "weight": 50}]}, "100"),
        ({"candidates": [{"version": 2, "weight": 101}]}, "weight"),
        ({"candidates": [{"version": 9, "weight": 10}]}, "no version 9"),
        ({"candidates": [{"version": "two", "weight": 10}]}, "version"),
        ({"candidates": [{"version": 2**40, "weight": 10}]}, "version"),
        ({"candidates": [{"version": 2, "weight": 10}], "plan": "yolo"}, "plan"),
        ({"candidates": [{"version": 2, "weight": 10}], "steps": "10,50"}, "steps"),
        (
            {"candidates": [{"version": 2, "weight": 10}], "plan": "linear", "steps": [50, 10]},
            "rising",
        ),
        ({"candidates": [{"version": 2, "weight": 10}], "guardrails": {"bogus": 1}}, "bogus"),
        ({"candidates": [{"version": 2, "weight": 10}], "guardrails": {"p95_ms": "x"}}, "p95_ms"),
        ({"candidates": [{"version": 2, "weight": 10}], "guardrails": []}, "guardrails"),
        ({"candidates": [{"version": 2, "weight": 10}], "bake_seconds": 0}, "bake_seconds"),
        ({"candidates": [{"version": 2, "weight": 10}], "sticky_header": "X User"}, "sticky"),
        ({"candidates": []}, "candidates"),
        ({"candidates": "v2"}, "candidates"),
        ({}, "candidates"),
    ],
)
def test_put_with_bad_input_is_400_and_starts_nothing(api_client, world, body, needle):
    response = api_client("deployer").put(f"{URL}/rollout", body, format="json")
    assert response.status_code == HTTPStatus.BAD_REQUEST, response.content
    assert needle in response.content.decode()
    assert not Rollout.objects.exists()


def test_put_of_the_stable_version_is_409(api_client, world):
    response = api_client("deployer").put(
        f"{URL}/rollout", {"candidates": [{"version": 1, "weight": 10}]}, format="json"
    )
    assert response.status_code == HTTPStatus.CONFLICT


def test_put_of_an_unapproved_version_is_409(api_client, world):
    ModelVersion.objects.filter(number=2).update(approval=ModelVersion.Approval.PENDING)
    response = api_client("deployer").put(
        f"{URL}/rollout", {"candidates": [{"version": 2, "weight": 10}]}, format="json"
    )
    assert response.status_code == HTTPStatus.CONFLICT
    assert "approved" in response.json()["error"]


def test_rollout_on_a_stopped_deployment_is_409(api_client, world):
    Deployment.objects.filter(pk=world.pk).update(state="stopped")
    client = api_client("deployer")
    response = client.put(
        f"{URL}/rollout", {"candidates": [{"version": 2, "weight": 10}]}, format="json"
    )
    assert response.status_code == HTTPStatus.CONFLICT
    assert "running" in response.json()["error"]
    shadow = client.put(f"{URL}/shadow", {"version": 2, "percent": 10}, format="json")
    assert shadow.status_code == HTTPStatus.CONFLICT


def test_promote_or_abort_without_a_rollout_is_409(api_client, world):
    client = api_client("deployer")
    assert client.post(f"{URL}/rollout/promote", {}, format="json").status_code == 409
    assert client.post(f"{URL}/rollout/abort", {}, format="json").status_code == 409


def test_viewers_read_but_may_not_change(api_client, world):
    client = api_client("viewer")
    assert client.get(f"{URL}/rollout").status_code == HTTPStatus.OK
    assert client.get(f"{URL}/shadow").status_code == HTTPStatus.OK
    body = {"candidates": [{"version": 2, "weight": 10}]}
    assert client.put(f"{URL}/rollout", body, format="json").status_code == 403
    assert client.post(f"{URL}/rollout/promote", {}, format="json").status_code == 403
    assert client.post(f"{URL}/rollout/abort", {}, format="json").status_code == 403
    shadow = client.put(f"{URL}/shadow", {"version": 2, "percent": 5}, format="json")
    assert shadow.status_code == 403
    assert client.delete(f"{URL}/shadow").status_code == 403
    assert not AuditEvent.objects.filter(action__startswith="rollout.").exists()


def test_unknown_deployment_is_404(api_client, world):
    assert api_client("viewer").get("/api/v1/deployments/nope/rollout").status_code == 404


def test_shadow_set_report_and_clear(api_client, world, queued):
    client = api_client("deployer")
    response = client.put(f"{URL}/shadow", {"version": 3, "percent": 20}, format="json")
    assert response.status_code == HTTPStatus.OK, response.content
    assert response.json()["version"] == 3 and response.json()["percent"] == 20
    assert AuditEvent.objects.get(action="deployment.shadow_set").details["to_version"] == 3
    now = timezone.now()
    ShadowPair.objects.bulk_create(
        [
            ShadowPair(deployment_name="dep", created_at=now, primary_version=1, shadow_version=3,
                       primary_ms=10.0, shadow_ms=14.0, shadow_status=200,
                       primary={"predictions": [1], "probabilities": [[0.2, 0.8]]},
                       shadow={"predictions": [p], "probabilities": [[0.4, 0.6]]})
            for p in (1, 1, 0)
        ]
        + [ShadowPair(deployment_name="dep", created_at=now, primary_version=1, shadow_version=3,
                      primary_ms=10.0, shadow_status=502, primary={"predictions": [1]})]
    )  # fmt: skip
    report = api_client("viewer").get(f"{URL}/shadow?minutes=5").json()["report"]
    assert report["samples"] == 4 and report["answered"] == 3
    assert report["kind"] == "classifier" and report["label_agreement"] == 0.6667
    assert report["shadow_error_rate"] == 0.25 and report["max_abs_delta_p"] == 0.2
    cleared = client.delete(f"{URL}/shadow")
    assert cleared.status_code == HTTPStatus.NO_CONTENT
    world.refresh_from_db()
    assert world.shadow_version is None and world.shadow_percent == 0
    assert AuditEvent.objects.filter(action="deployment.shadow_cleared").count() == 1


@pytest.mark.parametrize(
    "body",
    [
        {"version": 3, "percent": 0},
        {"version": 3, "percent": 101},
        {"version": 3, "percent": "lots"},
        {"version": 9, "percent": 10},
        {"version": 2**40, "percent": 10},
        {"percent": 10},
        [],
    ],
)
def test_shadow_with_bad_input_is_400(api_client, world, body):
    response = api_client("deployer").put(f"{URL}/shadow", body, format="json")
    assert response.status_code == HTTPStatus.BAD_REQUEST, response.content
    world.refresh_from_db()
    assert world.shadow_version is None


@pytest.mark.parametrize("minutes", ["0", "x", "100000"])
def test_shadow_report_window_is_checked(api_client, world, minutes):
    response = api_client("viewer").get(f"{URL}/shadow?minutes={minutes}")
    assert response.status_code == HTTPStatus.BAD_REQUEST


def test_the_schema_describes_the_rollout_and_shadow_endpoints(api_client):
    schema = api_client("viewer").get("/api/schema/?format=json")
    assert schema.status_code == HTTPStatus.OK
    paths = schema.json()["paths"]
    assert {"put", "get"} <= set(paths["/api/v1/deployments/{name}/rollout"])
    assert "post" in paths["/api/v1/deployments/{name}/rollout/promote"]
    assert "post" in paths["/api/v1/deployments/{name}/rollout/abort"]
    assert {"get", "put", "delete"} <= set(paths["/api/v1/deployments/{name}/shadow"])


@pytest.mark.slow
def test_rollout_and_shadow_operations_never_answer_500(world, make_user):
    """Schema-driven inputs against a running deployment (the generic fuzz test mostly meets
    deployments that do not exist): every answer is a 2xx, 4xx or 409, never a 500."""
    import base64

    import schemathesis
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings

    from portal.wsgi import application
    from tests.factories import PASSWORD

    make_user("admin", username="fuzz-rollouts")
    auth = {
        "Authorization": "Basic " + base64.b64encode(f"fuzz-rollouts:{PASSWORD}".encode()).decode()
    }
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
        operations = [
            result.ok()
            for result in schema.get_all_operations()
            if "/rollout" in result.ok().path or "/shadow" in result.ok().path
        ]
        assert len(operations) == 7
        for operation in operations:

            @given(case=operation.as_strategy())
            @hypothesis_settings(max_examples=25, deadline=None, database=None,
                                 suppress_health_check=list(HealthCheck))  # fmt: skip
            def run(case):
                label = f"{case.method} {case.path}"
                case.path_parameters = {"name": "dep"}
                response = case.call(headers=auth)
                assert response.status_code < 500, (label, case.body, response.text[:300])

            run()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
