"""The single writer of audit events, the chain verifier and the chain's checkpoints.

`audit_record` must be called inside the transaction of the change it records, so the event
and the change commit or roll back together. Writers are serialised (an advisory lock on
PostgreSQL, SQLite's write lock otherwise) so the chain never forks.

Each row's hash is an HMAC-SHA256 with a key kept outside the database (PORTAL_AUDIT_KEY; in
development a key file made once under the data dir): someone who can write the table but
not read the key cannot recompute the chain after editing it. What the chain alone cannot
show is its newest rows deleted, so a checkpoint of the head (count, id, hash, time; signed
with the same key) is appended to a file outside the database (PORTAL_AUDIT_CHECKPOINT_FILE)
and logged, by the beat task and `manage.py audit_verify`; verification checks the chain
against the latest checkpoint. Rows written before the key existed (key_id "") are plain
SHA-256; they may only come before every signed row.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from portal.models import AuditEvent

GENESIS_HASH = "0" * 64
_ADVISORY_LOCK_KEY = 0x6D6F64656C  # "model": any constant shared by all writers
log = logging.getLogger("portal.audit")


@dataclass(frozen=True)
class Actor:
    """Who did it, copied at the time of the action."""

    id: int | None
    name: str
    client_ip: str | None = None
    request_id: str = ""

    @classmethod
    def system(cls, name: str = "system", request_id: str = "") -> Actor:
        return cls(id=None, name=name, request_id=request_id)

    @classmethod
    def from_request(cls, request: Any) -> Actor:
        user = getattr(request, "user", None)
        authenticated = bool(user is not None and user.is_authenticated)
        return cls(
            id=user.pk if authenticated else None,
            name=user.get_username() if authenticated else "anonymous",
            client_ip=client_ip(request),
            request_id=getattr(request, "request_id", ""),
        )


def client_ip(request: Any) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _canonical(event: AuditEvent) -> bytes:
    body = {
        "created_at": event.created_at.isoformat(),
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_name": event.target_name,
        "request_id": event.request_id,
        "client_ip": event.client_ip,
        "outcome": event.outcome,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


_file_keys: dict[str, bytes] = {}


def audit_key() -> bytes:
    """PORTAL_AUDIT_KEY, or the key file (PORTAL_AUDIT_KEY_FILE), created once with a random key."""
    if settings.PORTAL_AUDIT_KEY:
        return settings.PORTAL_AUDIT_KEY.encode()
    path = str(settings.PORTAL_AUDIT_KEY_FILE)
    if path not in _file_keys:
        _file_keys[path] = _key_file(Path(path))
    return _file_keys[path]


def _key_file(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".audit-key-")
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.close(fd)
            os.link(tmp, path)  # whole or not at all; the first of racing processes wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise RuntimeError(f"the audit key file {path} holds fewer than 32 characters")
    return key


def key_id() -> str:
    """Names the key without revealing it: which key signed a row."""
    return hmac.new(audit_key(), b"portal audit key id", hashlib.sha256).hexdigest()[:16]


def compute_hash(event: AuditEvent) -> str:
    if not event.key_id:  # written before the chain was keyed
        return hashlib.sha256(_canonical(event)).hexdigest()
    return hmac.new(audit_key(), _canonical(event), hashlib.sha256).hexdigest()


def audit_record(
    *,
    actor: Actor,
    action: str,
    target: Any = None,
    target_type: str = "",
    target_id: str | int = "",
    target_name: str = "",
    outcome: str = AuditEvent.Outcome.SUCCESS,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain, inside the caller's transaction."""
    if target is not None:
        target_type = target_type or target._meta.model_name
        target_id = target_id or target.pk
        target_name = target_name or str(target)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK_KEY])
        last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        event = AuditEvent(
            created_at=timezone.now(),
            actor_id=actor.id,
            actor_name=actor.name[:150],
            action=action,
            target_type=target_type,
            target_id=str(target_id)[:64],
            target_name=str(target_name)[:255],
            request_id=actor.request_id[:64],
            client_ip=actor.client_ip,
            outcome=outcome,
            details=json.loads(json.dumps(details or {}, default=str)),
            prev_hash=last or GENESIS_HASH,
            key_id=key_id(),
        )
        event.hash = compute_hash(event)
        event.save()
    return event


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    broken_id: int | None = None
    reason: str = ""
    unsigned: int = 0  # rows from before the key (plain SHA-256), all at the start
    checkpoint: dict[str, Any] | None = None  # the checkpoint the chain was checked against


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head at one time, as written outside the database."""

    at: str
    count: int
    head_id: int | None
    head_hash: str
    key_id: str
    mac: str = ""

    def _body(self) -> bytes:
        fields = {k: v for k, v in asdict(self).items() if k != "mac"}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def signed(self) -> Checkpoint:
        mac = hmac.new(audit_key(), self._body(), hashlib.sha256).hexdigest()
        return Checkpoint(**{**asdict(self), "mac": mac})

    def genuine(self) -> bool:
        return hmac.compare_digest(self.signed().mac, self.mac)

    def summary(self) -> dict[str, Any]:
        return {"at": self.at, "count": self.count, "head_id": self.head_id}


class CheckpointError(Exception):
    """The checkpoint file exists but its last line cannot be read as a checkpoint."""


def checkpoint_latest() -> Checkpoint | None:
    """The last checkpoint in PORTAL_AUDIT_CHECKPOINT_FILE (None before the first one)."""
    path = Path(settings.PORTAL_AUDIT_CHECKPOINT_FILE)
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            tail = f.read().splitlines()
    except FileNotFoundError:
        return None
    if not tail:
        return None
    try:
        return Checkpoint(**json.loads(tail[-1]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"the last line of {path} is not a checkpoint: {exc}") from exc


def _checkpoint_append(checkpoint: Checkpoint) -> None:
    path = Path(settings.PORTAL_AUDIT_CHECKPOINT_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(checkpoint), sort_keys=True, separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    # The same line to the log, for a copy kept wherever the logs are shipped.
    log.info("audit checkpoint %s", line.strip())


def audit_verify(*, batch_size: int = 2000, from_checkpoint: bool = False) -> ChainReport:
    """Walk the chain in id order; report the first row whose links, content or signature do
    not match, or a chain shorter than (or different from) the latest checkpoint.

    `from_checkpoint`: check the checkpointed head is still there unchanged, then walk only
    the rows after it (what the periodic task does; the full walk is audit_verify's).
    """
    try:
        checkpoint = checkpoint_latest()
    except CheckpointError as exc:
        return ChainReport(False, 0, None, str(exc))
    if checkpoint is not None and not checkpoint.genuine():
        reason = (
            "the latest checkpoint's signature does not match the audit key "
            "(a forged checkpoint, or PORTAL_AUDIT_KEY changed)"
        )
        return ChainReport(False, 0, None, reason)
    summary = checkpoint.summary() if checkpoint else None
    current = key_id()
    previous, checked, unsigned, signed_seen = GENESIS_HASH, 0, 0, False
    events = AuditEvent.objects.order_by("id")
    if from_checkpoint and checkpoint is not None and checkpoint.head_id is not None:
        anchor = AuditEvent.objects.filter(pk=checkpoint.head_id).first()
        problem = _anchor_problem(checkpoint, anchor)
        if problem:
            return ChainReport(False, 0, checkpoint.head_id, problem, checkpoint=summary)
        previous, checked, signed_seen = anchor.hash, checkpoint.count, bool(anchor.key_id)
        events = events.filter(pk__gt=anchor.pk)
    anchored = checkpoint is None or checkpoint.head_id is None or from_checkpoint
    for event in events.iterator(chunk_size=batch_size):
        if event.prev_hash != previous:
            reason = "previous-hash link does not match"
            return ChainReport(False, checked, event.id, reason, unsigned, summary)
        if event.key_id and event.key_id != current:
            reason = "signed with another key than PORTAL_AUDIT_KEY (a changed key, or forged)"
            return ChainReport(False, checked, event.id, reason, unsigned, summary)
        if not event.key_id and signed_seen:
            reason = "an unsigned row after signed ones (a row forged without the key)"
            return ChainReport(False, checked, event.id, reason, unsigned, summary)
        if compute_hash(event) != event.hash:
            reason = "row content does not match its hash"
            return ChainReport(False, checked, event.id, reason, unsigned, summary)
        signed_seen = signed_seen or bool(event.key_id)
        unsigned += not event.key_id
        previous = event.hash
        checked += 1
        if checkpoint is not None and event.id == checkpoint.head_id:
            problem = _anchor_problem(checkpoint, event, position=checked)
            if problem:
                return ChainReport(False, checked, event.id, problem, unsigned, summary)
            anchored = True
    if not anchored or (checkpoint is not None and checked < checkpoint.count):
        reason = (
            f"the chain ends before the checkpoint of {checkpoint.at}: it recorded "
            f"{checkpoint.count} events up to id {checkpoint.head_id}, the table holds "
            f"{checked} (the newest rows were deleted)"
        )
        return ChainReport(False, checked, checkpoint.head_id, reason, unsigned, summary)
    return ChainReport(True, checked, unsigned=unsigned, checkpoint=summary)


def _anchor_problem(
    checkpoint: Checkpoint, event: AuditEvent | None, position: int | None = None
) -> str:
    if event is None:
        return (
            f"event {checkpoint.head_id}, the head at the checkpoint of {checkpoint.at}, is "
            "gone (the newest rows were deleted)"
        )
    if event.hash != checkpoint.head_hash:
        return (
            f"event {event.pk} is not the one the checkpoint of {checkpoint.at} recorded "
            "(the chain was rewritten)"
        )
    if position is None:
        position = AuditEvent.objects.filter(pk__lte=event.pk).count()
    if position != checkpoint.count:
        return (
            f"{position} events up to id {event.pk}, the checkpoint of {checkpoint.at} "
            f"recorded {checkpoint.count} (rows were deleted or inserted before it)"
        )
    return ""


def audit_checkpoint(*, actor: Actor, full: bool = False) -> tuple[ChainReport, Checkpoint | None]:
    """Verify the chain (since the last checkpoint, or `full`y), record that in the chain and,
    when it holds, append a checkpoint of the head (that new event) outside the database."""
    report = audit_verify(from_checkpoint=not full)
    details = {"checked": report.checked, "broken_id": report.broken_id, "reason": report.reason}
    with transaction.atomic():
        event = audit_record(
            actor=actor,
            action="audit.checkpointed" if report.ok else "audit.checkpoint_refused",
            target_type="audit",
            target_name="chain",
            outcome=AuditEvent.Outcome.SUCCESS if report.ok else AuditEvent.Outcome.FAILURE,
            details=details,
        )
        # Still under the writers' lock: no row can come between this event and its count.
        count = AuditEvent.objects.filter(pk__lte=event.pk).count()
    if not report.ok:
        log.error("audit chain broken at event %s: %s", report.broken_id, report.reason)
        return report, None
    checkpoint = Checkpoint(
        at=timezone.now().isoformat(),
        count=count,
        head_id=event.pk,
        head_hash=event.hash,
        key_id=event.key_id,
    ).signed()
    _checkpoint_append(checkpoint)
    return report, checkpoint
