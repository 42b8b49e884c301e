"""Alert rules per deployment: their figures, the evaluator with hysteresis, rule management.

A beat task (`deployments_app.tasks.alerts_evaluate`) calls `alert_rules_evaluate` every
PORTAL_ALERT_EVALUATE_SECONDS. Each enabled rule reads one figure over its window:

- `error_rate`: 5xx answers in % of the answered calls (4xx are the caller's, as in the
  rollout guardrails), once the window holds `min_requests` of them;
- `p95_latency`: the p95 in ms of the window's calls, once it holds `min_requests`;
- `no_traffic`: the calls in the window (fires when at most the threshold) while the
  deployment runs, and only a whole window after the rule was made;
- `replica_restarts`: replicas the reconciler replaced (exited, unhealthy, hanging) in the
  window;
- `drift`: the worst input feature's PSI in the latest drift window (monitoring.drift).

A rule fires after `fire_after` evaluations in a row past the threshold, and its alert
resolves after `resolve_after` in a row back past `clear_threshold` (the threshold when
unset): a figure that wobbles around the threshold neither fires nor resolves again and
again. A figure that cannot be read (too few calls, no drift yet) changes nothing.

Each transition writes the alert row, an audit event (`alert.fired`, `alert.resolved`), a
deployment event and a log line in one transaction, and enqueues the webhook delivery on
commit (monitoring.webhooks): the evaluator never waits for a receiver.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from math import isfinite
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from deployments_app.callstats import Totals, window_totals
from deployments_app.models import Alert, AlertRule, Deployment, DeploymentEvent
from deployments_app.monitoring import drift
from portal import latency
from portal.audit import Actor, audit_record
from portal.errors import ApplicationError, NotFoundError

log = logging.getLogger("deployments_app.alerts")
Kind = AlertRule.Kind
# "At most the threshold" fires these; every other kind fires "above the threshold".
LOW_KINDS = {Kind.NO_TRAFFIC}
UNITS = {Kind.ERROR_RATE: "%", Kind.P95_LATENCY: " ms", Kind.NO_TRAFFIC: "",
         Kind.REPLICA_RESTARTS: "", Kind.DRIFT: " PSI"}  # fmt: skip
NAMES = {Kind.ERROR_RATE: "error rate", Kind.P95_LATENCY: "p95 latency", Kind.NO_TRAFFIC: "calls",
         Kind.REPLICA_RESTARTS: "replicas replaced", Kind.DRIFT: "drift"}  # fmt: skip
MAX_WINDOW_MINUTES = 7 * 24 * 60
MAX_RULES_PER_DEPLOYMENT = 50
# What the reconciler writes when it replaces a replica (services._converge).
REPLACED_EVENT = "; replacing it"
SYSTEM = "alerts"


@dataclass(frozen=True)
class Reading:
    """A rule's figure now; `value` None: not enough data to judge."""

    value: float | None
    detail: str = ""


# --------------------------------------------------------------------------- figures


def _window(deployment: Deployment, since: datetime, now: datetime) -> Totals:
    totals = window_totals(
        since=since,
        now=now,
        deployment_name=deployment.name,
        raw_group_sql="0",
        rollup_key=lambda _start, _name, _version: 0,
    )
    return totals.get(0) or Totals()


def _read(rule: AlertRule, now: datetime) -> Reading:
    deployment = rule.deployment
    since = now - timedelta(minutes=rule.window_minutes)
    if rule.kind == Kind.DRIFT:
        worst = drift.latest_drift(deployment).get("worst")
        if not worst:
            return Reading(None, "no drift computed yet")
        feature, score = worst
        return Reading(float(score), f"worst feature {feature!r}")
    if rule.kind == Kind.REPLICA_RESTARTS:
        replaced = DeploymentEvent.objects.filter(
            deployment=deployment, created_at__gte=since, message__contains=REPLACED_EVENT
        ).count()
        return Reading(float(replaced), f"in the last {rule.window_minutes} min")
    totals = _window(deployment, since, now)
    if rule.kind == Kind.NO_TRAFFIC:
        running = deployment.state in (Deployment.State.RUNNING, Deployment.State.DEGRADED)
        if not running or now - rule.created_at < timedelta(minutes=rule.window_minutes):
            return Reading(None, "not running, or the rule is younger than its window")
        return Reading(float(totals.requests), f"in the last {rule.window_minutes} min")
    if rule.kind == Kind.ERROR_RATE:
        answered = totals.requests - totals.errors_4xx
        if answered < max(1, rule.min_requests):
            return Reading(None, f"{answered} of {rule.min_requests} calls")
        rate = 100.0 * totals.errors_5xx / answered
        return Reading(round(rate, 3), f"{totals.errors_5xx} of {answered} calls failed")
    if rule.kind == Kind.P95_LATENCY:
        if totals.requests < max(1, rule.min_requests):
            return Reading(None, f"{totals.requests} of {rule.min_requests} calls")
        p95 = latency.quantile(totals.histogram, 0.95)
        if p95 is None:
            return Reading(None, "no latency recorded")
        return Reading(round(p95, 2), f"over {totals.requests} calls")
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def _clear_at(rule: AlertRule) -> float:
    return rule.threshold if rule.clear_threshold is None else rule.clear_threshold


def breached(rule: AlertRule, value: float) -> bool:
    return value <= rule.threshold if rule.kind in LOW_KINDS else value > rule.threshold


def cleared(rule: AlertRule, value: float) -> bool:
    clear = _clear_at(rule)
    return value > clear if rule.kind in LOW_KINDS else value <= clear


# --------------------------------------------------------------------------- evaluator


def _describe(rule: AlertRule, value: float, reading: Reading) -> str:
    unit = UNITS.get(rule.kind, "")
    op = "<=" if rule.kind in LOW_KINDS else ">"
    return (f"{NAMES[rule.kind]}: {value:g}{unit} {op} {rule.threshold:g}{unit} "
            f"({reading.detail}; window {rule.window_minutes} min)")  # fmt: skip


def _enqueue_delivery(alert: Alert, event: str) -> None:
    from deployments_app import tasks

    transaction.on_commit(lambda: tasks.alert_deliver.delay(alert.pk, event=event))


def _delivery_pending(deployment: Deployment) -> bool:
    hook = getattr(deployment, "alert_webhook", None)
    return bool(hook and hook.enabled)


def _fire(rule: AlertRule, value: float, reading: Reading, now: datetime) -> Alert | None:
    message = _describe(rule, value, reading)
    deployment = rule.deployment
    pending = _delivery_pending(deployment)
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                rule=rule,
                deployment=deployment,
                kind=rule.kind,
                threshold=rule.threshold,
                value=value,
                message=message,
                fired_at=now,
                delivery_status=Alert.Delivery.PENDING if pending else Alert.Delivery.NONE,
                delivery_event="fired" if pending else "",
            )
            audit_record(
                actor=Actor.system(SYSTEM),
                action="alert.fired",
                target=deployment,
                outcome="failure",
                details={"alert": alert.pk, "rule": rule.pk, "kind": rule.kind,
                         "value": value, "threshold": rule.threshold, "message": message},
            )  # fmt: skip
            DeploymentEvent.objects.create(deployment=deployment, message=f"alert: {message}")
            if pending:
                _enqueue_delivery(alert, "fired")
    except IntegrityError:
        return None  # another evaluator fired it first (one firing alert per rule)
    log.warning("alert %s fired: deployment %s: %s", alert.pk, deployment.name, message)
    return alert


def _resolve(alert: Alert, value: float | None, why: str, now: datetime) -> bool:
    deployment = alert.deployment
    pending = _delivery_pending(deployment)
    with transaction.atomic():
        changes: dict[str, Any] = {"state": Alert.State.RESOLVED, "resolved_at": now,
                                   "resolved_value": value}  # fmt: skip
        if pending:
            changes |= {"delivery_status": Alert.Delivery.PENDING, "delivery_event": "resolved",
                        "delivery_attempts": 0, "delivery_error": ""}  # fmt: skip
        if not Alert.objects.filter(pk=alert.pk, state=Alert.State.FIRING).update(**changes):
            return False  # resolved meanwhile
        audit_record(
            actor=Actor.system(SYSTEM),
            action="alert.resolved",
            target=deployment,
            details={"alert": alert.pk, "rule": alert.rule_id, "kind": alert.kind,
                     "value": value, "threshold": alert.threshold, "reason": why},
        )  # fmt: skip
        DeploymentEvent.objects.create(
            deployment=deployment, message=f"alert {alert.pk} resolved: {why}"
        )
        if pending:
            _enqueue_delivery(alert, "resolved")
    log.info("alert %s resolved: deployment %s: %s", alert.pk, deployment.name, why)
    return True


def alert_rule_evaluate(*, rule: AlertRule, now: datetime | None = None) -> str:
    """Judge one rule: 'fired', 'resolved', 'firing', 'ok' or 'no data'."""
    now = now or timezone.now()
    reading = _read(rule, now)
    state = dict(rule.eval_state or {})
    firing = Alert.objects.filter(rule=rule, state=Alert.State.FIRING).first()
    outcome = "firing" if firing else "ok"
    if reading.value is None:
        outcome = "no data"
    elif firing is None:
        state["clears"] = 0
        state["breaches"] = state.get("breaches", 0) + 1 if breached(rule, reading.value) else 0
        if state["breaches"] >= max(1, rule.fire_after):
            state["breaches"] = 0
            if _fire(rule, reading.value, reading, now):
                outcome = "fired"
    else:
        state["breaches"] = 0
        state["clears"] = state.get("clears", 0) + 1 if cleared(rule, reading.value) else 0
        if state["clears"] >= max(1, rule.resolve_after):
            state["clears"] = 0
            unit = UNITS.get(rule.kind, "")
            why = f"{reading.value:g}{unit} back within {_clear_at(rule):g}{unit}"
            if _resolve(firing, reading.value, why, now):
                outcome = "resolved"
    state["detail"] = reading.detail
    AlertRule.objects.filter(pk=rule.pk).update(
        eval_state=state, last_evaluated_at=now, last_value=reading.value
    )
    return outcome


def alert_rules_evaluate(*, now: datetime | None = None) -> dict[str, int]:
    """Judge every enabled rule of every deployment; a rule that fails to read is logged and
    skipped (one broken rule must not silence the others)."""
    counts: dict[str, int] = {}
    rules = AlertRule.objects.filter(enabled=True).select_related(
        "deployment", "deployment__alert_webhook"
    )
    for rule in rules:
        try:
            outcome = alert_rule_evaluate(rule=rule, now=now)
        except Exception:
            log.exception("alert rule %s (%s) could not be evaluated", rule.pk, rule.kind)
            outcome = "error"
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


# --------------------------------------------------------------------------- rules


def _check_rule(kind: str, threshold: Any, clear_threshold: Any, window_minutes: Any,
                min_requests: Any, fire_after: Any, resolve_after: Any) -> None:  # fmt: skip
    if kind not in Kind.values:
        raise ApplicationError(f"kind must be one of {', '.join(Kind.values)}")
    for label, value in (("threshold", threshold), ("clear_threshold", clear_threshold)):
        if value is None and label == "clear_threshold":
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not isfinite(value):
            raise ApplicationError(f"{label} must be a finite number")
        if value < 0:
            raise ApplicationError(f"{label} must not be negative")
    if kind == Kind.ERROR_RATE and threshold > 100:
        raise ApplicationError("an error-rate threshold is a percentage: at most 100")
    if clear_threshold is not None:
        low = kind in LOW_KINDS
        if (low and clear_threshold < threshold) or (not low and clear_threshold > threshold):
            side = "at least" if low else "at most"
            raise ApplicationError(f"clear_threshold must be {side} the threshold")
    if not 1 <= window_minutes <= MAX_WINDOW_MINUTES:
        raise ApplicationError(f"window_minutes must be between 1 and {MAX_WINDOW_MINUTES}")
    if not 0 <= min_requests <= 1_000_000:
        raise ApplicationError("min_requests must be between 0 and 1000000")
    for label, value in (("fire_after", fire_after), ("resolve_after", resolve_after)):
        if not 1 <= value <= 100:
            raise ApplicationError(f"{label} must be between 1 and 100")


def alert_rule_create(
    *,
    deployment: Deployment,
    actor: Actor,
    kind: str,
    threshold: float,
    clear_threshold: float | None = None,
    window_minutes: int = 5,
    min_requests: int = 20,
    fire_after: int = 1,
    resolve_after: int = 2,
    enabled: bool = True,
) -> AlertRule:
    _check_rule(kind, threshold, clear_threshold, window_minutes, min_requests, fire_after,
                resolve_after)  # fmt: skip
    if deployment.alert_rules.count() >= MAX_RULES_PER_DEPLOYMENT:
        raise ApplicationError(f"a deployment has at most {MAX_RULES_PER_DEPLOYMENT} rules")
    with transaction.atomic():
        rule = AlertRule.objects.create(
            deployment=deployment,
            kind=kind,
            threshold=float(threshold),
            clear_threshold=None if clear_threshold is None else float(clear_threshold),
            window_minutes=window_minutes,
            min_requests=min_requests,
            fire_after=fire_after,
            resolve_after=resolve_after,
            enabled=enabled,
            created_by_id=actor.id,
        )
        audit_record(
            actor=actor,
            action="alert_rule.created",
            target=deployment,
            details={"rule": rule.pk, "kind": kind, "threshold": rule.threshold,
                     "clear_threshold": rule.clear_threshold, "window_minutes": window_minutes,
                     "min_requests": min_requests, "fire_after": fire_after,
                     "resolve_after": resolve_after, "enabled": enabled},
        )  # fmt: skip
    return rule


def alert_rule_get(*, deployment: Deployment, rule_id: Any) -> AlertRule:
    try:
        return deployment.alert_rules.get(pk=int(rule_id))
    except (AlertRule.DoesNotExist, TypeError, ValueError):
        raise NotFoundError(f"deployment '{deployment.name}' has no alert rule {rule_id}") from None


def alert_rule_delete(*, rule: AlertRule, actor: Actor) -> None:
    """Delete a rule; its firing alert is resolved first (the history stays)."""
    firing = Alert.objects.filter(rule=rule, state=Alert.State.FIRING).first()
    if firing is not None:
        _resolve(firing, None, "its rule was deleted", timezone.now())
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="alert_rule.deleted",
            target=rule.deployment,
            details={"rule": rule.pk, "kind": rule.kind, "threshold": rule.threshold},
        )
        rule.delete()


def alerts_for(*, deployment: Deployment | None = None, state: str = "") -> Any:
    """Alerts, newest first, optionally of one deployment and one state."""
    qs = Alert.objects.select_related("deployment", "rule")
    if deployment is not None:
        qs = qs.filter(deployment=deployment)
    if state:
        qs = qs.filter(state=state)
    return qs.order_by("-fired_at", "-id")
