"""Thin Celery tasks of the registry: reload the row, call one service."""

from __future__ import annotations

from celery import shared_task

from models_app import services


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def validate_model_version(version_id: int, *, request_id: str = "") -> None:
    services.model_version_validate(version_id=version_id, request_id=request_id)
