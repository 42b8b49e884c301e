"""Thin Celery tasks: each calls one service. Safe to run twice (CAS guards in services)."""

from __future__ import annotations

from celery import shared_task
from django.core.cache import cache
from django.utils import timezone

from deployments_app import retention, rollouts, rollups, services
from deployments_app.monitoring import alerts, webhooks
from portal.locks import alone
from portal.selectors import RECONCILE_LAST_KEY

TASK_OPTIONS = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": True}


@shared_task(**TASK_OPTIONS)
def deploy(deployment_id: int, *, request_id: str = "", restart: bool = False) -> None:
    services.deployment_deploy(deployment_id=deployment_id, request_id=request_id, restart=restart)


@shared_task(**TASK_OPTIONS)
def stop(deployment_id: int, *, request_id: str = "") -> None:
    services.deployment_stop_replicas(deployment_id=deployment_id, request_id=request_id)


@shared_task(**TASK_OPTIONS)
def converge(deployment_id: int, *, request_id: str = "") -> None:
    services.deployment_converge(deployment_id=deployment_id, request_id=request_id)


@shared_task(**TASK_OPTIONS)
def update(deployment_id: int, *, request_id: str = "", version_id: int) -> None:
    services.deployment_switch_version(
        deployment_id=deployment_id, version_id=version_id, request_id=request_id
    )


@shared_task(**TASK_OPTIONS)
def rollout_replicas(deployment_id: int, *, request_id: str = "", drain: bool = False) -> None:
    rollouts.rollout_replicas(deployment_id=deployment_id, request_id=request_id, drain=drain)


@shared_task(ignore_result=True)
def rollouts_judge() -> None:
    with alone("portal:rollouts-judge-lock", timeout=300) as mine:
        if mine:
            rollouts.rollouts_judge()


@shared_task(ignore_result=True)
def reconcile() -> None:
    with alone("portal:reconcile-lock", timeout=300) as mine:
        if mine:
            services.reconcile()
            # The dashboard shows when this last completed (a stale time means beat is down).
            cache.set(RECONCILE_LAST_KEY, timezone.now().isoformat(), timeout=None)


@shared_task(ignore_result=True)
def prune_images() -> None:
    with alone("portal:prune-lock", timeout=3600) as mine:
        if mine:
            services.images_prune()


@shared_task(ignore_result=True)
def rollups_fold() -> None:
    # The fold locks its watermark row too; this only spares a queued duplicate the wait.
    with alone("portal:rollups-fold-lock", timeout=600) as mine:
        if mine:
            rollups.prediction_rollups_fold()


@shared_task(ignore_result=True)
def prediction_log_retention() -> None:
    with alone("portal:retention-lock", timeout=3600) as mine:
        if mine:
            retention.prediction_log_retention_run()
            rollouts.shadow_pairs_retention()


@shared_task(ignore_result=True)
def alerts_evaluate() -> None:
    with alone("portal:alerts-evaluate-lock", timeout=300) as mine:
        if mine:
            alerts.alert_rules_evaluate()


@shared_task(bind=True, max_retries=None, **TASK_OPTIONS)
def alert_deliver(self, alert_id: int, *, event: str) -> None:
    """One webhook attempt; the service says when (and whether) to try again."""
    outcome = webhooks.alert_deliver(
        alert_id=alert_id, event=event, attempt=self.request.retries + 1
    )
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)


@shared_task(ignore_result=True)
def drift_compute() -> None:
    from deployments_app.monitoring import services as monitoring

    with alone("portal:drift-lock", timeout=900) as mine:
        if mine:
            monitoring.drift_compute_all()


@shared_task(ignore_result=True)
def capture_retention() -> None:
    from deployments_app.monitoring import services as monitoring

    with alone("portal:capture-retention-lock", timeout=3600) as mine:
        if mine:
            monitoring.capture_retention_run()
