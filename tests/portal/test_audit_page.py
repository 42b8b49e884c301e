"""The audit review page: events and prediction calls, filters, pages, CSV, chain check."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone

from deployments_app.models import PredictionLog
from portal.audit import Actor, audit_record
from portal.models import AuditEvent


@pytest.fixture(autouse=True)
def _private_cache(settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"audit-{uuid.uuid4().hex}",
        }
    }


def record(action: str, *, actor: str = "alice", target: str = "house", outcome="success", **kw):
    return audit_record(
        actor=Actor(id=None, name=actor, request_id=kw.pop("request_id", "")),
        action=action,
        target_type="deployment",
        target_name=target,
        outcome=outcome,
        details=kw.pop("details", {}),
    )


def calls(name: str, n: int, *, status: int = 200, ago=timedelta(minutes=1), **kw):
    PredictionLog.objects.bulk_create(
        PredictionLog(
            created_at=timezone.now() - ago,
            deployment_name=name,
            model_name=kw.get("model", f"{name}-model"),
            caller=kw.get("caller", "alice"),
            status_code=status,
            latency_ms=5.0,
            error=kw.get("error", ""),
            request_id=uuid.uuid4().hex,
        )
        for _ in range(n)
    )


def read_csv(response) -> list[list[str]]:
    assert isinstance(response, StreamingHttpResponse)
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


@pytest.fixture
def admin(role_client):
    return role_client("admin")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query,expected",
    [
        ({"actor": "bob"}, {"deployment.stopped"}),
        ({"action": "deployment."}, {"deployment.started", "deployment.stopped"}),
        ({"target": "iris"}, {"model.uploaded"}),
        ({"outcome": "denied"}, {"deployment.started"}),
        ({"q": "needle"}, {"model.uploaded"}),  # free text reaches the details
        ({"q": "req-42"}, {"deployment.stopped"}),
    ],
)
def test_event_filters(admin, query, expected):
    record("deployment.started", outcome="denied")
    record("deployment.stopped", actor="bob", request_id="req-42")
    record("model.uploaded", target="iris", details={"note": "a needle here"})
    response = admin.get(reverse("audit-list"), query)
    assert response.status_code == HTTPStatus.OK
    assert {e.action for e in response.context["page"]} == expected


@pytest.mark.django_db
def test_event_date_range_filter(admin):
    old = record("model.uploaded")
    AuditEvent.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    record("model.approved")
    today = timezone.localdate().isoformat()
    response = admin.get(reverse("audit-list"), {"since": today, "until": today, "actor": "alice"})
    assert [e.action for e in response.context["page"]] == ["model.approved"]
    week_ago = (timezone.localdate() - timedelta(days=20)).isoformat()
    until = (timezone.localdate() - timedelta(days=5)).isoformat()
    response = admin.get(reverse("audit-list"), {"since": week_ago, "until": until})
    assert [e.action for e in response.context["page"]] == ["model.uploaded"]


@pytest.mark.django_db
def test_bad_date_is_reported_not_fatal(admin):
    record("model.uploaded")
    response = admin.get(reverse("audit-list"), {"since": "not-a-date", "actor": "alice"})
    assert response.status_code == HTTPStatus.OK
    assert len(response.context["page"]) == 1
    assert "since" in response.content.decode()


@pytest.mark.django_db
def test_events_are_paginated_newest_first(admin):
    for i in range(120):
        record(f"model.step{i}")
    first = admin.get(reverse("audit-list"))
    assert first.context["page"].paginator.num_pages == 3
    assert first.context["page"][0].action == "model.step119"
    last = admin.get(reverse("audit-list"), {"page": 3, "actor": "alice"})
    assert len(last.context["page"]) == 20
    html = last.content.decode()
    assert "page 3 of 3" in html
    assert "actor=alice" in html  # page links keep the filters


@pytest.mark.django_db
def test_calls_tab_filters_by_deployment_outcome_and_text(admin):
    calls("house", 3)
    calls("house", 2, status=503, error="no healthy replica")
    calls("iris", 4, caller="bob")
    page = lambda **q: admin.get(reverse("audit-list"), {"tab": "calls", **q}).context["page"]  # noqa: E731
    assert page().paginator.count == 9
    assert page(deployment="house").paginator.count == 5
    assert page(deployment="house", outcome="failure").paginator.count == 2
    assert page(outcome="success").paginator.count == 7
    assert page(actor="bob").paginator.count == 4
    assert page(q="healthy replica").paginator.count == 2
    html = admin.get(reverse("audit-list"), {"tab": "calls"}).content.decode()
    assert 'id="calls"' in html and "503" in html


@pytest.mark.django_db
def test_csv_export_streams_the_filtered_events_and_is_audited(admin):
    record("deployment.started")
    record("deployment.stopped", actor="bob")
    record("model.uploaded")
    response = admin.get(reverse("audit-export"), {"action": "deployment."})
    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment;" in response["Content-Disposition"]
    rows = read_csv(response)
    assert rows[0][:4] == ["id", "created_at", "actor_name", "action"]
    assert sorted(r[3] for r in rows[1:]) == ["deployment.started", "deployment.stopped"]
    exported = AuditEvent.objects.get(action="audit.exported")
    assert exported.actor_name == admin.user.username
    assert exported.details["filters"] == {"action": "deployment."}


@pytest.mark.django_db
def test_csv_export_of_calls_handles_many_rows_in_chunks(admin, django_assert_max_num_queries):
    calls("house", 4500)
    calls("iris", 10)
    response = admin.get(reverse("audit-export"), {"tab": "calls", "deployment": "house"})
    chunks = iter(response.streaming_content)
    assert next(chunks).startswith(b"id,created_at,deployment_name")
    # Rows are read in chunks of 2000 while the response is written, not all up front.
    with django_assert_max_num_queries(12):
        rest = b"".join(chunks)
    assert rest.count(b"\n") == 4500


@pytest.mark.django_db
def test_csv_export_neutralises_spreadsheet_formulas(admin):
    record("model.uploaded", target='=HYPERLINK("http://evil")')
    rows = read_csv(admin.get(reverse("audit-export")))
    targets = [r[6] for r in rows[1:] if r[3] == "model.uploaded"]
    assert targets == ['\'=HYPERLINK("http://evil")']


@pytest.mark.django_db
def test_verify_button_runs_the_check_and_remembers_the_result(admin):
    record("model.uploaded")
    record("model.approved")
    page = admin.get(reverse("audit-list")).content.decode()
    assert "not checked yet" in page

    existing = AuditEvent.objects.count()  # ours and the admin's login

    response = admin.post(reverse("audit-verify"), follow=True)

    html = response.content.decode()
    assert f"Audit chain intact: {existing} events verified." in html
    assert 'id="chain-status">intact' in html
    assert f"by {admin.user.username}" in html
    verified = AuditEvent.objects.get(action="audit.verified")
    assert verified.details == {"checked": existing, "broken_id": None}
    # The result stays on the page until the next run.
    assert 'id="chain-status">intact' in admin.get(reverse("audit-list")).content.decode()


@pytest.mark.django_db
def test_verify_shows_a_broken_chain(admin):
    record("model.uploaded")
    tampered = record("model.approved")
    record("model.deleted")
    AuditEvent.objects.filter(pk=tampered.pk).update(actor_name="mallory")

    html = admin.post(reverse("audit-verify"), follow=True).content.decode()

    assert f"Audit chain broken at event {tampered.pk}" in html
    assert 'id="chain-status">broken' in html
    assert AuditEvent.objects.get(action="audit.verified").outcome == "failure"


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["viewer", "deployer", "approver"])
def test_only_admins_reach_the_audit_review(role_client, role):
    client = role_client(role)
    assert client.get(reverse("audit-list")).status_code == HTTPStatus.FORBIDDEN
    assert client.get(reverse("audit-export")).status_code == HTTPStatus.FORBIDDEN
    assert client.post(reverse("audit-verify")).status_code == HTTPStatus.FORBIDDEN
    assert not AuditEvent.objects.filter(action__startswith="audit.").exists()


@pytest.mark.django_db
def test_anonymous_is_sent_to_login(role_client):
    client = role_client(None)
    for response in (
        client.get(reverse("audit-export")),
        client.post(reverse("audit-verify")),
    ):
        assert response.status_code == HTTPStatus.FOUND
        assert reverse("login") in response["Location"]
