"""The audit chain's HMAC and its checkpoints outside the database (issue 11, item 8).

What the attacker here can do: run SQL on the portal's database (edit, delete, insert rows
without the model's append-only guard), not read PORTAL_AUDIT_KEY or rewrite the checkpoint
file. Each test makes such a change and shows that audit_verify finds it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import stat

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from portal import audit
from portal.audit import Actor, audit_record, audit_verify, checkpoint_latest
from portal.models import AuditEvent

pytestmark = [pytest.mark.security, pytest.mark.django_db]


def _events(n: int) -> list[AuditEvent]:
    return [
        audit_record(actor=Actor.system(), action="test.event", target_name=f"t{i}")
        for i in range(n)
    ]


def _checkpoint_lines(settings) -> list[dict]:
    path = settings.PORTAL_AUDIT_CHECKPOINT_FILE
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rewrite_chain(*, key: bytes | None, key_id: str) -> None:
    """What someone with SQL but without our key can do: rehash every row in order, with a
    key of their own or as unkeyed SHA-256."""
    previous = audit.GENESIS_HASH
    for event in AuditEvent.objects.order_by("id"):
        event.prev_hash, event.key_id = previous, key_id
        body = audit._canonical(event)
        digest = (
            hashlib.sha256(body).hexdigest()
            if key is None
            else hmac.new(key, body, hashlib.sha256).hexdigest()
        )
        AuditEvent.objects.filter(pk=event.pk).update(
            prev_hash=previous, hash=digest, key_id=key_id
        )
        previous = digest


def test_rows_are_signed_with_the_audit_key(settings):
    (event,) = _events(1)
    assert event.key_id == audit.key_id() and len(event.hash) == 64
    # Another key gives another hash for the same row: the hash is not a plain digest.
    settings.PORTAL_AUDIT_KEY = "another-key-" + "q" * 32
    assert audit.compute_hash(event) != event.hash


def test_audit_verify_writes_a_checkpoint_file_and_a_log_line(settings, caplog):
    _events(3)
    with caplog.at_level(logging.INFO, logger="portal.audit"):
        call_command("audit_verify")
    (line,) = _checkpoint_lines(settings)
    head = AuditEvent.objects.order_by("-id").first()
    assert head.action == "audit.checkpointed"  # the check is itself in the chain
    assert line["count"] == 4 and line["head_id"] == head.pk and line["head_hash"] == head.hash
    assert line["mac"] and line["at"]
    assert any("audit checkpoint" in r.message and head.hash in r.message for r in caplog.records)
    assert stat.S_IMODE(settings.PORTAL_AUDIT_CHECKPOINT_FILE.stat().st_mode) == 0o600
    call_command("audit_verify")
    assert len(_checkpoint_lines(settings)) == 2  # appended, never rewritten


def test_deleting_the_newest_rows_is_detected(settings):
    _events(5)
    call_command("audit_verify")
    newest = list(AuditEvent.objects.order_by("-id")[:2])
    # The chain without its last two rows is still a valid chain: only the checkpoint knows.
    AuditEvent.objects.filter(pk__in=[e.pk for e in newest])._raw_delete(AuditEvent.objects.db)
    report = audit_verify()
    assert not report.ok
    assert "newest rows were deleted" in report.reason
    assert report.checkpoint["count"] == 6
    with pytest.raises(CommandError, match="newest rows were deleted"):
        call_command("audit_verify")
    # The periodic check (from the checkpoint only) finds it too.
    assert not audit_verify(from_checkpoint=True).ok


def test_deleting_every_row_is_detected(settings):
    _events(3)
    call_command("audit_verify")
    AuditEvent.objects.all()._raw_delete(AuditEvent.objects.db)
    report = audit_verify()
    assert not report.ok and "newest rows were deleted" in report.reason


def test_rows_added_after_a_checkpoint_verify(settings):
    _events(2)
    call_command("audit_verify")
    _events(3)
    report = audit_verify()
    assert report.ok and report.checked == 6
    assert audit_verify(from_checkpoint=True).ok


def test_an_edited_row_recomputed_with_another_key_is_detected(settings):
    _events(4)
    call_command("audit_verify")
    AuditEvent.objects.filter(target_name="t1").update(actor_name="mallory")
    # Rehashed with the attacker's key under the attacker's key id...
    _rewrite_chain(key=b"attacker-key-" + b"a" * 32, key_id="0123456789abcdef")
    report = audit_verify()
    assert not report.ok and "another key" in report.reason
    # ...or under our key id, which they can copy but not sign for.
    _rewrite_chain(key=b"attacker-key-" + b"a" * 32, key_id=audit.key_id())
    report = audit_verify()
    assert not report.ok and "does not match its hash" in report.reason


def test_a_chain_recomputed_as_unkeyed_rows_is_detected_by_the_checkpoint(settings):
    _events(4)
    call_command("audit_verify")
    AuditEvent.objects.filter(target_name="t2").update(actor_name="mallory")
    # Every row passed off as written before the key existed: internally consistent...
    _rewrite_chain(key=None, key_id="")
    report = audit_verify()
    # ...but its head no longer is the one the checkpoint recorded.
    assert not report.ok and "chain was rewritten" in report.reason
    assert not audit_verify(from_checkpoint=True).ok


def test_an_unkeyed_row_after_keyed_ones_is_refused(settings):
    _events(3)
    last = AuditEvent.objects.order_by("-id").first()
    last.key_id = ""
    digest = hashlib.sha256(audit._canonical(last)).hexdigest()
    AuditEvent.objects.filter(pk=last.pk).update(key_id="", hash=digest)
    report = audit_verify()
    assert not report.ok and "unsigned row after signed ones" in report.reason


def test_a_forged_checkpoint_is_detected(settings):
    _events(4)
    call_command("audit_verify")
    newest = AuditEvent.objects.order_by("-id").first()
    newest_pk = newest.pk
    AuditEvent.objects.filter(pk=newest_pk)._raw_delete(AuditEvent.objects.db)
    # A checkpoint of the truncated chain, appended without the key.
    head = AuditEvent.objects.order_by("-id").first()
    forged = {
        "at": "2030-01-01T00:00:00+00:00",
        "count": AuditEvent.objects.count(),
        "head_id": head.pk,
        "head_hash": head.hash,
        "key_id": head.key_id,
        "mac": "0" * 64,
    }
    with settings.PORTAL_AUDIT_CHECKPOINT_FILE.open("a") as f:
        f.write(json.dumps(forged) + "\n")
    report = audit_verify()
    assert not report.ok and "signature does not match" in report.reason


def test_the_beat_task_checkpoints_and_refuses_a_broken_chain(settings):
    from portal.tasks import audit_checkpoint

    assert (
        settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]["task"] == "portal.tasks.audit_checkpoint"
    )
    _events(3)
    audit_checkpoint()
    first = checkpoint_latest()
    assert first is not None and first.count == 4 and first.genuine()
    AuditEvent.objects.filter(pk=first.head_id)._raw_delete(AuditEvent.objects.db)
    audit_checkpoint()
    assert checkpoint_latest() == first  # no checkpoint of a broken chain
    refused = AuditEvent.objects.order_by("-id").first()
    assert refused.action == "audit.checkpoint_refused"
    assert refused.outcome == AuditEvent.Outcome.FAILURE
    assert "newest rows were deleted" in refused.details["reason"]


def test_development_key_file_is_made_once_and_kept(settings, tmp_path):
    settings.PORTAL_AUDIT_KEY = ""
    settings.PORTAL_AUDIT_KEY_FILE = tmp_path / "keys" / "audit.key"
    audit._file_keys.clear()
    try:
        first = audit.key_id()
        path = settings.PORTAL_AUDIT_KEY_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_text()) >= 32
        audit._file_keys.clear()  # as a new process would
        assert audit.key_id() == first
        (event,) = _events(1)
        assert event.key_id == first and audit_verify().ok
    finally:
        audit._file_keys.clear()
