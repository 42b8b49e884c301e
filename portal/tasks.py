"""The core's periodic task: a checkpoint of the audit chain's head, outside the database."""

from __future__ import annotations

from celery import shared_task

from portal import audit
from portal.locks import alone


@shared_task(ignore_result=True)
def audit_checkpoint(*, request_id: str = "") -> None:
    with alone("portal:audit-checkpoint-lock", timeout=3600) as mine:
        if mine:
            audit.audit_checkpoint(actor=audit.Actor.system("audit-checkpoint", request_id))
