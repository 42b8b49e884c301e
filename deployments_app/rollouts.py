"""Rollouts and shadow traffic: business logic (the proxy's routing is predict/routing.py).

A rollout puts candidate versions beside a deployment's stable one, each with a weight.
Commands record intent and queue `tasks.rollout_replicas`, which starts the candidates'
replicas (the proxy routes to a candidate only once one is healthy) and removes replicas no
version wants any more. `rollouts_judge` (Celery beat) judges every active rollout's current
step on the prediction log; a breach sets the candidate's weight to 0 at once and records
the metrics that decided it. Every change writes an audit event.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments_app import services
from deployments_app.callstats import Totals, window_totals
from deployments_app.models import Deployment, Replica, Rollout, RolloutCandidate, ShadowPair
from models_app.governance import deploy_refusal
from models_app.models import ModelVersion
from portal import latency
from portal.audit import Actor, audit_record
from portal.errors import ApplicationError, ConflictError
from portal.locks import alone

log = logging.getLogger(__name__)
State = Deployment.State
MAX_CANDIDATES = 4
DEFAULT_GUARDRAILS: dict[str, float] = {
    "min_samples": 100,  # calls a candidate must have answered in the step (4xx excluded)
    "max_error_rate": 0.05,  # breach above max(this, stable's rate + error_rate_delta)
    "error_rate_delta": 0.02,
    "p95_ms": 250.0,  # breach above max(this, p95_factor x stable's p95)
    "p95_factor": 2.0,
}


# --------------------------------------------------------------------------- commands


def _version(deployment: Deployment, number: Any) -> ModelVersion:
    try:
        version = ModelVersion.objects.get(model=deployment.model, number=int(number))
    except (ValueError, TypeError, ModelVersion.DoesNotExist) as exc:
        raise ApplicationError(f"{deployment.model.name} has no version {number!r}") from exc
    if refusal := deploy_refusal(version):
        raise ConflictError(refusal)
    if version.pk == deployment.version_id:
        raise ConflictError(f"v{version.number} is the stable version already")
    return version


def _guardrails(given: dict[str, Any] | None) -> dict[str, float]:
    out = dict(DEFAULT_GUARDRAILS)
    for key, value in (given or {}).items():
        if key not in DEFAULT_GUARDRAILS:
            raise ApplicationError(
                f"unknown guardrail '{key}'; known: {', '.join(DEFAULT_GUARDRAILS)}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ApplicationError(f"guardrail '{key}' must be a number >= 0")
        out[key] = float(value)
    return out


def _check_running(deployment: Deployment) -> None:
    if deployment.state not in (State.RUNNING, State.DEGRADED):
        raise ConflictError(f"the deployment is {deployment.state}: rollouts need it running")


def active_rollout(deployment: Deployment) -> Rollout | None:
    return (
        Rollout.objects.filter(deployment=deployment, status=Rollout.Status.ACTIVE)
        .prefetch_related("candidates__version")
        .first()
    )


@dataclass(frozen=True)
class CandidateSpec:
    version: Any  # a version number
    weight: int


def rollout_set(
    *,
    deployment: Deployment,
    candidates: list[CandidateSpec],
    actor: Actor,
    plan: str = Rollout.Plan.MANUAL,
    steps: list[int] | None = None,
    bake_seconds: int = 300,
    auto_promote: bool = False,
    guardrails: dict[str, Any] | None = None,
    sticky_header: str = "",
    candidate_replicas: int = 1,
) -> Rollout:
    """Start a rollout, or replace the active one's whole configuration at once (same id, so
    sticky callers keep their place; a candidate whose weight rises keeps its callers)."""
    _check_running(deployment)
    if not 1 <= len(candidates) <= MAX_CANDIDATES:
        raise ApplicationError(f"a rollout has 1 to {MAX_CANDIDATES} candidates")
    if plan not in Rollout.Plan.values:
        raise ApplicationError(f"plan must be one of {', '.join(Rollout.Plan.values)}")
    steps = [int(w) for w in steps or []]
    if plan == Rollout.Plan.MANUAL:
        steps = []
    else:
        if len(candidates) != 1:
            raise ApplicationError(f"a {plan} plan moves one candidate")
        if plan == Rollout.Plan.CANARY:
            steps = steps[:1] or [candidates[0].weight]
        if not steps or any(not 0 < w <= 100 for w in steps) or steps != sorted(steps):
            raise ApplicationError("steps are rising weights between 1 and 100")
        candidates = [CandidateSpec(candidates[0].version, steps[0])]
    versions = [(_version(deployment, c.version), int(c.weight)) for c in candidates]
    if len({v.pk for v, _ in versions}) != len(versions):
        raise ApplicationError("a version can be a candidate once")
    if any(not 0 <= w <= 100 for _, w in versions) or sum(w for _, w in versions) > 100:
        raise ApplicationError("weights are percentages adding up to at most 100")
    if not 1 <= bake_seconds <= 7 * 86400:
        raise ApplicationError("bake_seconds must be between 1 and 604800")
    if not 1 <= candidate_replicas <= services.MAX_REPLICAS:
        raise ApplicationError(f"candidate_replicas must be between 1 and {services.MAX_REPLICAS}")
    sticky_header = sticky_header.strip()
    if sticky_header and not (sticky_header.isascii() and sticky_header.replace("-", "").isalnum()):
        raise ApplicationError("sticky_header must be a header name")
    fields = {
        "plan": plan,
        "steps": steps,
        "bake_seconds": bake_seconds,
        "auto_promote": auto_promote,
        "guardrails": _guardrails(guardrails),
        "sticky_header": sticky_header,
        "candidate_replicas": candidate_replicas,
    }
    with transaction.atomic():
        Deployment.objects.select_for_update().filter(pk=deployment.pk).first()
        rollout = active_rollout(deployment)
        now = timezone.now()
        if rollout is None:
            rollout = Rollout.objects.create(
                deployment=deployment,
                stable_version=deployment.version,
                step_started_at=now,
                created_by_id=actor.id,
                **fields,
            )
            action = "rollout.started"
        else:
            before = {c.version.number: c.weight for c in rollout.candidates.all()}
            for key, value in fields.items():
                setattr(rollout, key, value)
            rollout.step, rollout.step_started_at, rollout.verdict = 0, now, ""
            rollout.save()
            rollout.candidates.all().delete()
            action = "rollout.changed"
        RolloutCandidate.objects.bulk_create(
            [RolloutCandidate(rollout=rollout, version=v, weight=w) for v, w in versions]
        )
        weights = {v.number: w for v, w in versions}
        audit_record(
            actor=actor,
            action=action,
            target=deployment,
            details={
                "rollout": rollout.pk,
                "weights": weights,
                **({"before": before} if action == "rollout.changed" else {}),
                **fields,
            },
        )
        services._event(
            deployment,
            f"rollout {rollout.pk}: "
            + ", ".join(f"v{n} at {w}%" for n, w in weights.items())
            + f" ({plan}) by {actor.name}",
        )
        services._enqueue("rollout_replicas", deployment.pk, actor.request_id)
    return rollout


def rollout_promote(
    *, deployment: Deployment, actor: Actor, version: Any = None, reason: str = ""
) -> Deployment:
    """The candidate becomes the stable version; the old stable drains and stops."""
    with transaction.atomic():
        Deployment.objects.select_for_update().filter(pk=deployment.pk).first()
        deployment.refresh_from_db()
        rollout = active_rollout(deployment)
        if rollout is None:
            raise ConflictError("there is no active rollout to promote")
        candidates = list(rollout.candidates.all())
        if version is None and len(candidates) != 1:
            raise ApplicationError("name the candidate version to promote")
        chosen = next(
            (c for c in candidates if version is None or str(c.version.number) == str(version)),
            None,
        )
        if chosen is None:
            raise ApplicationError(f"v{version} is not a candidate of this rollout")
        healthy = Replica.objects.filter(
            deployment=deployment, version_number=chosen.version.number, healthy=True
        ).exists()
        if not healthy:
            raise ConflictError(f"v{chosen.version.number} has no healthy replica yet")
        old = deployment.version
        Deployment.objects.filter(pk=deployment.pk).update(
            version=chosen.version, previous_version=old
        )
        _finish(rollout, Rollout.Status.PROMOTED, verdict=reason or f"promoted by {actor.name}")
        audit_record(
            actor=actor,
            action="rollout.promoted",
            target=deployment,
            details={
                "rollout": rollout.pk,
                "from_version": old.number,
                "to_version": chosen.version.number,
                "reason": reason,
            },
        )
        services._event(
            deployment, f"v{chosen.version.number} promoted to stable (was v{old.number})"
        )
        services._enqueue("rollout_replicas", deployment.pk, actor.request_id, drain=True)
    deployment.refresh_from_db()
    return deployment


def rollout_abort(*, deployment: Deployment, actor: Actor, reason: str = "") -> Rollout:
    """Weight 0 for every candidate at once; their replicas stop."""
    with transaction.atomic():
        rollout = active_rollout(deployment)
        if rollout is None:
            raise ConflictError("there is no active rollout to abort")
        _finish(rollout, Rollout.Status.ABORTED, verdict=reason or f"aborted by {actor.name}")
        audit_record(
            actor=actor,
            action="rollout.aborted",
            target=deployment,
            details={"rollout": rollout.pk, "reason": reason},
        )
        services._event(deployment, f"rollout {rollout.pk} aborted by {actor.name}")
        services._enqueue("rollout_replicas", deployment.pk, actor.request_id, drain=True)
    return rollout


def _finish(rollout: Rollout, status: str, *, verdict: str, decision: dict | None = None) -> None:
    RolloutCandidate.objects.filter(rollout=rollout).update(weight=0)
    rollout.status, rollout.verdict = status, verdict[:200]
    rollout.finished_at = timezone.now()
    if decision is not None:
        rollout.decision = decision
    rollout.save(update_fields=["status", "verdict", "finished_at", "decision"])


def shadow_set(*, deployment: Deployment, version: Any, percent: int, actor: Actor) -> Deployment:
    """Copy `percent` of calls to `version` after they are answered (0 or None: no shadow)."""
    if version is None or not percent:
        if deployment.shadow_version_id is None:
            return deployment
        chosen, percent = None, 0
    else:
        _check_running(deployment)
        chosen = _version(deployment, version)
        if not 1 <= int(percent) <= 100:
            raise ApplicationError("percent must be between 1 and 100")
    with transaction.atomic():
        before = deployment.shadow_version.number if deployment.shadow_version else None
        Deployment.objects.filter(pk=deployment.pk).update(
            shadow_version=chosen, shadow_percent=int(percent)
        )
        audit_record(
            actor=actor,
            action="deployment.shadow_set" if chosen else "deployment.shadow_cleared",
            target=deployment,
            details={"from_version": before, "to_version": chosen and chosen.number,
                     "percent": int(percent)},
        )  # fmt: skip
        services._event(
            deployment,
            f"shadow: v{chosen.number} gets a copy of {percent}% of calls"
            if chosen
            else "shadow traffic off",
        )
        services._enqueue("rollout_replicas", deployment.pk, actor.request_id)
    deployment.refresh_from_db()
    return deployment


# --------------------------------------------------------------------------- replicas


def wanted_versions(deployment: Deployment) -> dict[int, int]:
    """Version number -> replica count for every version besides the stable one that should
    run now: the active rollout's candidates (weight 0 included: an operator may raise it)
    and the shadow."""
    out: dict[int, int] = {}
    rollout = active_rollout(deployment)
    if rollout is not None:
        for candidate in rollout.candidates.all():
            out[candidate.version.number] = rollout.candidate_replicas
    if deployment.shadow_version_id and deployment.shadow_percent:
        out.setdefault(deployment.shadow_version.number, 1)
    out.pop(deployment.version.number, None)
    return out


def rollout_replicas(*, deployment_id: int, request_id: str = "", drain: bool = False) -> None:
    """Start what the candidates and the shadow lack; remove replicas of versions that
    neither the stable version nor they want (after the proxies' cache has drained)."""
    hold = settings.PORTAL_BUILD_TIMEOUT + settings.PORTAL_START_TIMEOUT + 60
    with alone(f"portal:converge-{deployment_id}", timeout=hold) as mine:
        if not mine:  # a converge or a deploy holds the deployment: try again shortly
            from deployments_app import tasks

            tasks.rollout_replicas.apply_async(
                (deployment_id,), {"request_id": request_id, "drain": drain}, countdown=5
            )
            return
        deployment = (
            Deployment.objects.select_related("version__model", "shadow_version")
            .filter(pk=deployment_id)
            .first()
        )
        if deployment is None or deployment.state not in (State.RUNNING, State.DEGRADED):
            return
        wanted = wanted_versions(deployment)
        runtime = services._runtime(deployment)
        keep = {deployment.version.number, *wanted}
        if drain:
            time.sleep(services.DRAIN_SECONDS)
        for status in runtime.list_replicas(deployment.name):
            if status.version not in keep:
                runtime.remove_replica(status.name)
                Replica.objects.filter(name=status.name).delete()
        for number, count in wanted.items():
            _converge_version(deployment, number, count, request_id)
        if drain:  # promoted: the new stable version needs its full count
            services._enqueue("converge", deployment.pk, request_id)


def _converge_version(deployment: Deployment, number: int, count: int, request_id: str) -> None:
    runtime = services._runtime(deployment)
    version = ModelVersion.objects.get(model=deployment.model, number=number)
    alive = []
    for status in runtime.list_replicas(deployment.name):
        if status.version != number:
            continue
        if status.state in ("running", "starting") and (
            status.state == "starting" or services._answers(status)
        ):
            alive.append(status)
            continue
        runtime.remove_replica(status.name)
        Replica.objects.filter(name=status.name).delete()
        services._event(deployment, f"replica {status.name} of v{number} was {status.state}")
    need = count - len(alive)
    if need <= 0:
        return
    try:
        build = services._latest_build(deployment, version) or services.deployment_build(
            deployment=deployment, version=version
        )
        used = {s.index for s in runtime.list_replicas(deployment.name)}
        indexes = [i for i in range(need + len(used) + 1) if i not in used][:need]
        failed = services._start_replicas(deployment, version, build, indexes)
    except Exception as exc:  # noqa: BLE001 - the stable version keeps serving; shown on the page
        failed, detail = [True], str(exc)
    else:
        detail = "; ".join(s.detail or s.state for s in failed)
    if failed:
        services._event(deployment, f"v{number} replicas did not start: {detail[:500]}")
        audit_record(
            actor=Actor.system("worker", request_id),
            action="rollout.replicas_failed",
            target=deployment,
            outcome="failure",
            details={"version": number, "error": detail[:1000]},
        )


# --------------------------------------------------------------------------- guardrails


@dataclass
class Side:
    """One version's figures over the judged window (4xx answers are not samples)."""

    samples: int
    errors: int
    error_rate: float
    p95_ms: float | None

    @classmethod
    def of(cls, totals: Totals | None) -> Side:
        t = totals or Totals()
        samples = t.requests - t.errors_4xx
        p95 = latency.quantile(t.histogram, 0.95) if t.requests else None
        rate = t.errors_5xx / samples if samples else 0.0
        return cls(samples, t.errors_5xx, round(rate, 5), p95 and round(p95, 2))


def _breaches(candidate: Side, stable: Side, rails: dict[str, float]) -> list[str]:
    out = []
    error_limit = max(rails["max_error_rate"], stable.error_rate + rails["error_rate_delta"])
    if candidate.error_rate > error_limit:
        out.append(f"error rate {candidate.error_rate:.2%} > {error_limit:.2%}")
    if candidate.p95_ms is not None:
        p95_limit = max(rails["p95_ms"], rails["p95_factor"] * (stable.p95_ms or 0.0))
        if candidate.p95_ms > p95_limit:
            out.append(f"p95 {candidate.p95_ms:.1f} ms > {p95_limit:.1f} ms")
    return out


def rollout_judge(rollout: Rollout, *, now: datetime | None = None) -> str:
    """Judge the active rollout's current step: 'breach', 'insufficient data', 'baking',
    'passed' (next step or done) or 'promoted'."""
    now = now or timezone.now()
    deployment = rollout.deployment
    since = rollout.step_started_at or rollout.created_at
    # Rollups for the folded minutes of the step, raw rows for the rest: exact and cheap.
    totals = window_totals(
        since=since,
        now=now,
        deployment_name=deployment.name,
        raw_group_sql="version_number",
        rollup_key=lambda _start, _name, version: version,
    )
    stable = Side.of(totals.get(deployment.version.number))
    rails = {**DEFAULT_GUARDRAILS, **rollout.guardrails}
    judged: dict[str, Any] = {"stable": {"version": deployment.version.number, **vars(stable)}}
    breached: dict[int, list[str]] = {}
    waiting = []
    for candidate in rollout.candidates.all():
        if candidate.weight == 0:
            continue
        side = Side.of(totals.get(candidate.version.number))
        judged[f"v{candidate.version.number}"] = vars(side) | {"weight": candidate.weight}
        if side.samples < rails["min_samples"]:
            waiting.append(f"v{candidate.version.number}: {side.samples} of "
                           f"{int(rails['min_samples'])} samples")  # fmt: skip
            continue
        if reasons := _breaches(side, stable, rails):
            breached[candidate.version.number] = reasons
    decision = {"at": now.isoformat(), "step": rollout.step, "since": since.isoformat(),
                "guardrails": rails, "metrics": judged}  # fmt: skip
    if breached:
        reason = "; ".join(f"v{n}: {', '.join(r)}" for n, r in breached.items())
        with transaction.atomic():
            _finish(rollout, Rollout.Status.ROLLED_BACK, verdict=f"breach: {reason}",
                    decision=decision | {"breaches": breached})  # fmt: skip
            audit_record(
                actor=Actor.system("guardrails"),
                action="rollout.rolled_back",
                target=deployment,
                outcome="failure",
                details={"rollout": rollout.pk, "reason": reason, **decision},
            )
            services._event(deployment, f"rollout {rollout.pk} rolled back: {reason}")
            services._enqueue("rollout_replicas", deployment.pk, drain=True)
        return "breach"
    baked = now - since >= timedelta(seconds=rollout.bake_seconds)
    if waiting:
        verdict = "insufficient data: " + ", ".join(waiting)
        Rollout.objects.filter(pk=rollout.pk).update(verdict=verdict[:200], decision=decision)
        return "insufficient data"
    if not baked or rollout.plan == Rollout.Plan.MANUAL:
        left = max(0, rollout.bake_seconds - int((now - since).total_seconds()))
        verdict = f"passing; {left} s of bake left" if left else "passing"
        Rollout.objects.filter(pk=rollout.pk).update(verdict=verdict, decision=decision)
        return "baking"
    if rollout.step + 1 < len(rollout.steps):
        with transaction.atomic():
            rollout.step += 1
            rollout.step_started_at = now
            rollout.verdict = f"step {rollout.step} passed"
            rollout.decision = decision
            rollout.save(update_fields=["step", "step_started_at", "verdict", "decision"])
            weight = rollout.steps[rollout.step]
            RolloutCandidate.objects.filter(rollout=rollout).update(weight=weight)
            audit_record(
                actor=Actor.system("guardrails"),
                action="rollout.step_passed",
                target=deployment,
                details={"rollout": rollout.pk, "weight": weight, **decision},
            )
            services._event(deployment, f"rollout {rollout.pk}: step passed, now {weight}%")
        return "passed"
    if rollout.auto_promote:
        Rollout.objects.filter(pk=rollout.pk).update(decision=decision)
        rollout_promote(
            deployment=deployment,
            actor=Actor.system("guardrails"),
            reason="every step passed its guardrails",
        )
        return "promoted"
    Rollout.objects.filter(pk=rollout.pk).update(
        verdict="every step passed: ready to promote", decision=decision
    )
    return "passed"


def rollouts_judge(*, now: datetime | None = None) -> dict[str, str]:
    """Judge every active rollout (Celery beat): {deployment name: outcome}."""
    out = {}
    for rollout in Rollout.objects.filter(status=Rollout.Status.ACTIVE).select_related(
        "deployment__version", "deployment__model"
    ):
        try:
            out[rollout.deployment.name] = rollout_judge(rollout, now=now)
        except Exception:  # noqa: BLE001 - one rollout's failure must not stop the others
            log.exception("judging rollout %s failed", rollout.pk)
            out[rollout.deployment.name] = "error"
    return out


# --------------------------------------------------------------------------- shadow report


REPORT_MAX_PAIRS = 20_000


def shadow_report(*, deployment: Deployment, since: datetime) -> dict[str, Any]:
    """Primary against shadow over the pairs since `since` (the latest REPORT_MAX_PAIRS of
    them: a report is a sample, not a census): agreement, deltas, latency."""
    pairs = list(
        ShadowPair.objects.filter(deployment_name=deployment.name, created_at__gte=since)
        .order_by("-id")[:REPORT_MAX_PAIRS]
        .values("primary", "shadow", "primary_ms", "shadow_ms", "shadow_status",
                "shadow_version")
    )  # fmt: skip
    answered = [p for p in pairs if p["shadow_status"] == 200 and p["shadow"]]
    agree = total = 0
    deltas: list[float] = []
    proba_deltas: list[float] = []
    for p in answered:
        mine, theirs = p["primary"].get("predictions", []), p["shadow"].get("predictions", [])
        for a, b in zip(mine, theirs, strict=False):
            total += 1
            agree += a == b
            if isinstance(a, int | float) and isinstance(b, int | float):
                deltas.append(abs(float(a) - float(b)))
        for ra, rb in zip(
            p["primary"].get("probabilities") or [],
            p["shadow"].get("probabilities") or [],
            strict=False,
        ):
            proba_deltas += [abs(x - y) for x, y in zip(ra, rb, strict=False)]
    classifier = bool((deployment.version.schema or {}).get("classes"))

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    report: dict[str, Any] = {
        "samples": len(pairs),
        "answered": len(answered),
        "shadow_error_rate": round(1 - len(answered) / len(pairs), 4) if pairs else None,
        "primary_p50_ms": pct([p["primary_ms"] for p in pairs], 0.5),
        "primary_p95_ms": pct([p["primary_ms"] for p in pairs], 0.95),
        "shadow_p50_ms": pct([p["shadow_ms"] for p in answered], 0.5),
        "shadow_p95_ms": pct([p["shadow_ms"] for p in answered], 0.95),
        "kind": "classifier" if classifier else "regressor",
    }
    if classifier:
        report["label_agreement"] = round(agree / total, 4) if total else None
        report["mean_abs_delta_p"] = (
            round(sum(proba_deltas) / len(proba_deltas), 6) if proba_deltas else None
        )
        report["max_abs_delta_p"] = round(max(proba_deltas), 6) if proba_deltas else None
    else:
        report["mae"] = round(sum(deltas) / len(deltas), 6) if deltas else None
        report["max_abs_delta"] = round(max(deltas), 6) if deltas else None
    return report


def shadow_pairs_retention(*, now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - timedelta(days=settings.PORTAL_SHADOW_DAYS)
    removed, _ = ShadowPair.objects.filter(created_at__lt=cutoff).delete()
    return removed
