"""The audit log: login events, the single writer, and the tamper-evident chain."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.urls import reverse

from portal.audit import Actor, audit_record, audit_verify
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_login_logout_and_failed_login_are_recorded(client, make_user):
    user = make_user("viewer", username="alice")
    bad = client.post(
        reverse("login"),
        {"username": "alice", "password": "wrong"},
        HTTP_X_REQUEST_ID="req-failed-1",
    )
    assert bad.status_code == HTTPStatus.OK  # the form again, with an error
    good = client.post(reverse("login"), {"username": "alice", "password": "correct-horse-battery"})
    assert good.status_code == HTTPStatus.FOUND
    client.post(reverse("logout"))
    events = list(AuditEvent.objects.order_by("id").values_list("action", "actor_name", "outcome"))
    assert events == [
        ("auth.login_failed", "alice", "failure"),
        ("auth.login", "alice", "success"),
        ("auth.logout", "alice", "success"),
    ]
    failed = AuditEvent.objects.get(action="auth.login_failed")
    assert failed.request_id == "req-failed-1"
    assert failed.client_ip == "127.0.0.1"
    assert "wrong" not in str(failed.details)
    assert AuditEvent.objects.get(action="auth.login").target_id == str(user.pk)


def test_chain_verifies_and_detects_an_edited_row():
    for i in range(5):
        audit_record(actor=Actor.system(), action="test.event", target_name=f"t{i}")
    assert audit_verify().ok
    victim = AuditEvent.objects.order_by("id")[2]
    # Bypass the model's append-only guard the way an attacker with SQL access would.
    AuditEvent.objects.filter(pk=victim.pk).update(actor_name="mallory")
    report = audit_verify()
    assert not report.ok
    assert report.broken_id == victim.pk
    assert report.checked == 2
    with pytest.raises(CommandError, match=f"id={victim.pk}"):
        call_command("audit_verify")


def test_chain_detects_a_deleted_row():
    for i in range(4):
        audit_record(actor=Actor.system(), action="test.event", target_name=f"t{i}")
    victim = AuditEvent.objects.order_by("id")[1]
    AuditEvent.objects.filter(pk=victim.pk)._raw_delete(AuditEvent.objects.db)
    report = audit_verify()
    assert not report.ok and "previous-hash" in report.reason


def test_events_are_append_only():
    event = audit_record(actor=Actor.system(), action="test.event")
    event.action = "changed"
    with pytest.raises(RuntimeError):
        event.save()
    with pytest.raises(RuntimeError):
        event.delete()


def test_audit_row_rolls_back_with_the_change():
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        audit_record(actor=Actor.system(), action="test.event")
        1 / 0  # noqa: B018 - the change fails after the audit write
    assert not AuditEvent.objects.exists()


def test_audit_verify_command_reports_an_intact_chain(capsys):
    audit_record(actor=Actor.system(), action="test.event")
    call_command("audit_verify")
    assert "intact: 1 events" in capsys.readouterr().out
