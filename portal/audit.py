"""The single writer of audit events, and the chain verifier.

`audit_record` must be called inside the transaction of the change it records, so the event
and the change commit or roll back together. Writers are serialised (an advisory lock on
PostgreSQL, SQLite's write lock otherwise) so the chain never forks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from portal.models import AuditEvent

GENESIS_HASH = "0" * 64
_ADVISORY_LOCK_KEY = 0x6D6F64656C  # "model": any constant shared by all writers


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


def compute_hash(event: AuditEvent) -> str:
    return hashlib.sha256(_canonical(event)).hexdigest()


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


def audit_verify(*, batch_size: int = 2000) -> ChainReport:
    """Walk the chain in id order; report the first row whose links or content do not match."""
    previous = GENESIS_HASH
    checked = 0
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=batch_size):
        if event.prev_hash != previous:
            return ChainReport(False, checked, event.id, "previous-hash link does not match")
        if compute_hash(event) != event.hash:
            return ChainReport(False, checked, event.id, "row content does not match its hash")
        previous = event.hash
        checked += 1
    return ChainReport(True, checked)
