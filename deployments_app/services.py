"""Deployment business logic: launch, build, start, stop, scale, update, roll back, delete.

Web requests only record intent (desired state, an event, an audit row) and queue a task;
tasks do the slow work through the runtime protocol and move `state` with compare-and-set
updates, so a retried or duplicated task never does the same work twice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from deployments_app.models import Build, Deployment, DeploymentEvent, Replica
from deployments_app.predict.inputs import reference_rows
from deployments_app.runtimes import (
    allowed_runtimes,
    available_runtimes,
    get_runtime,
    replica_token,
    runtime_name,
)
from deployments_app.runtimes.base import BuildResult, BuildSpec, ReplicaLimits, probe_health
from deployments_app.transitions import ALLOWED, check_action
from models_app.governance import deploy_refusal
from models_app.models import ModelVersion
from models_app.storage import artifact_data_key, artifact_path
from portal.audit import Actor, audit_record
from portal.errors import ApplicationError, ConflictError
from portal.heartbeat import beating
from portal.locks import alone

log = logging.getLogger(__name__)
State = Deployment.State
SERVER_DIR = Path(__file__).resolve().parent / "model_server"
MAX_REPLICAS = 8
MAX_BATCH_ROWS = 1000  # the proxy's own limit per call
MAX_BATCH_WAIT_MS = 1000.0
DRAIN_SECONDS = 3.0  # > the proxy's replica-list cache (deployments_app.predict.proxy)


# --------------------------------------------------------------------------- helpers


def _event(deployment: Deployment, message: str, state: str = "") -> None:
    DeploymentEvent.objects.create(deployment=deployment, message=message[:4000], state=state)
    # Events are the real changes (a state changed, a replica replaced): one log line each.
    log.info("deployment %s: %s", deployment.name, message[:300])


def _set_state(
    deployment: Deployment,
    new: str,
    *,
    expected: tuple[str, ...] | None = None,
    message: str = "",
    reason: str | None = None,
) -> bool:
    """Compare-and-set the state; returns False (and changes nothing) when it moved on."""
    qs = Deployment.objects.filter(pk=deployment.pk)
    if expected is not None:
        qs = qs.filter(state__in=expected)
    fields: dict[str, Any] = {"state": new, "state_changed_at": timezone.now()}
    if reason is not None:
        fields["failure_reason"] = reason[:4000]
    with transaction.atomic():
        changed = qs.update(**fields)
        if changed:
            _event(deployment, message or f"state -> {new}", state=new)
    if changed:
        deployment.refresh_from_db()
    return bool(changed)


def _heartbeat(deployment: Deployment) -> None:
    Deployment.objects.filter(pk=deployment.pk).update(heartbeat_at=timezone.now())


def _runtime(deployment: Deployment):
    return get_runtime(deployment.runtime)


def _enqueue(task_name: str, deployment_id: int, request_id: str = "", **kwargs: Any) -> None:
    from deployments_app import tasks

    task = getattr(tasks, task_name)
    transaction.on_commit(lambda: task.delay(deployment_id, request_id=request_id, **kwargs))


def _default_runtime() -> str:
    """The configured runtime when a deployer may use it, else the first one allowed."""
    configured, allowed = runtime_name(), allowed_runtimes()
    return configured if configured in allowed or not allowed else allowed[0]


def _check_limits(replicas: int, memory_mb: int, cpus: float) -> None:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ApplicationError(f"replicas must be between 1 and {MAX_REPLICAS}")
    if not 64 <= memory_mb <= 16384:
        raise ApplicationError("memory must be between 64 and 16384 MB")
    if not 0.1 <= cpus <= 8:
        raise ApplicationError("cpus must be between 0.1 and 8")


# --------------------------------------------------------------------------- commands


def deployment_launch(
    *,
    version: ModelVersion,
    name: str,
    actor: Actor,
    user: Any = None,
    runtime: str = "",
    replicas: int = 1,
    memory_mb: int = 512,
    cpus: float = 1.0,
    batch_max_size: int = 0,
    batch_max_wait_ms: float = 0.0,
) -> Deployment:
    """Create a deployment of a ready version and queue its build."""
    from models_app.services import _check_name

    _check_name(name)
    if refusal := deploy_refusal(version):
        raise ConflictError(refusal)
    _check_limits(replicas, memory_mb, cpus)
    if not 0 <= batch_max_size <= MAX_BATCH_ROWS or not 0 <= batch_max_wait_ms <= MAX_BATCH_WAIT_MS:
        raise ApplicationError(
            f"batching: at most {MAX_BATCH_ROWS} rows and {MAX_BATCH_WAIT_MS:g} ms of wait"
        )
    runtime = runtime or _default_runtime()
    if runtime not in ("docker", "process"):
        raise ApplicationError(f"unknown runtime '{runtime}' (use docker or process)")
    allowed = allowed_runtimes()
    if runtime not in allowed:
        raise ApplicationError(
            f"the {runtime} runtime is not allowed on this portal "
            f"(PORTAL_ALLOWED_RUNTIMES offers: {', '.join(allowed) or 'none'})"
        )
    with transaction.atomic():
        if Deployment.objects.filter(name=name).exists():
            raise ConflictError(f"a deployment named '{name}' exists already")
        deployment = Deployment.objects.create(
            name=name,
            model=version.model,
            version=version,
            runtime=runtime,
            replicas=replicas,
            memory_mb=memory_mb,
            cpus=cpus,
            batch_max_size=batch_max_size,
            batch_max_wait_ms=batch_max_wait_ms,
            created_by=user if user and user.pk else None,
        )
        _event(
            deployment, f"launched v{version.number} on {runtime} by {actor.name}", State.PENDING
        )
        audit_record(
            actor=actor,
            action="deployment.launched",
            target=deployment,
            details={
                "model": version.model.name,
                "version": version.number,
                "runtime": runtime,
                "replicas": replicas,
                "memory_mb": memory_mb,
                "cpus": cpus,
                "batch_max_size": batch_max_size,
                "batch_max_wait_ms": batch_max_wait_ms,
            },
        )
        _enqueue("deploy", deployment.pk, actor.request_id)
    return deployment


def deployment_stop(*, deployment: Deployment, actor: Actor) -> Deployment:
    check_action(deployment, "stop")
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(desired_state=Deployment.Desired.STOPPED)
        if not _set_state(
            deployment,
            State.STOPPING,
            expected=ALLOWED["stop"],
            message=f"stop requested by {actor.name}",
        ):
            raise ConflictError(f"'{deployment.name}' changed state meanwhile; reload and retry")
        audit_record(actor=actor, action="deployment.stop_requested", target=deployment)
        _enqueue("stop", deployment.pk, actor.request_id)
    deployment.refresh_from_db()
    return deployment


def deployment_start(*, deployment: Deployment, actor: Actor) -> Deployment:
    # Starting a stopped deployment deploys its version again: the same rule as a launch.
    if refusal := deploy_refusal(deployment.version):
        raise ConflictError(refusal)
    check_action(deployment, "start")
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(
            desired_state=Deployment.Desired.RUNNING, work_attempts=0
        )
        # Compare-and-set: a start sent twice (two tabs) must not reset a deployment that the
        # first one already brought back.
        if not _set_state(
            deployment,
            State.PENDING,
            expected=ALLOWED["start"],
            message=f"start requested by {actor.name}",
            reason="",
        ):
            raise ConflictError(f"'{deployment.name}' changed state meanwhile; reload and retry")
        audit_record(actor=actor, action="deployment.start_requested", target=deployment)
        _enqueue("deploy", deployment.pk, actor.request_id)
    deployment.refresh_from_db()
    return deployment


def deployment_restart(*, deployment: Deployment, actor: Actor) -> Deployment:
    check_action(deployment, "restart")
    with transaction.atomic():
        audit_record(actor=actor, action="deployment.restart_requested", target=deployment)
        Deployment.objects.filter(pk=deployment.pk).update(
            desired_state=Deployment.Desired.RUNNING, work_attempts=0
        )
        _set_state(
            deployment, State.PENDING, message=f"restart requested by {actor.name}", reason=""
        )
        _enqueue("deploy", deployment.pk, actor.request_id, restart=True)
    deployment.refresh_from_db()
    return deployment


def deployment_scale(*, deployment: Deployment, replicas: int, actor: Actor) -> Deployment:
    _check_limits(replicas, deployment.memory_mb, deployment.cpus)
    if deployment.state not in (State.RUNNING, State.DEGRADED, State.STOPPED):
        raise ConflictError(f"the deployment is {deployment.state}; wait until it settles")
    with transaction.atomic():
        before = deployment.replicas
        Deployment.objects.filter(pk=deployment.pk).update(replicas=replicas)
        _event(deployment, f"scaled from {before} to {replicas} replicas by {actor.name}")
        audit_record(
            actor=actor,
            action="deployment.scaled",
            target=deployment,
            details={"from": before, "to": replicas},
        )
        if deployment.state != State.STOPPED:
            _enqueue("converge", deployment.pk, actor.request_id)
    deployment.refresh_from_db()
    return deployment


def deployment_update(
    *, deployment: Deployment, version: ModelVersion, actor: Actor, rollback: bool = False
) -> Deployment:
    """Move to another version of the same model: build, start new, switch, stop old."""
    if version.model_id != deployment.model_id:
        raise ApplicationError("a deployment can only move to another version of its model")
    if refusal := deploy_refusal(version):
        raise ConflictError(refusal)
    if version.pk == deployment.version_id:
        raise ConflictError(f"the deployment already serves v{version.number}")
    if deployment.state not in (State.RUNNING, State.DEGRADED):
        raise ConflictError(f"the deployment is {deployment.state}: updates need it running")
    from deployments_app.rollouts import active_rollout  # rollouts builds on this module

    if active_rollout(deployment) is not None:
        raise ConflictError("a rollout is active: promote or abort it first")
    action = "deployment.rolled_back" if rollback else "deployment.update_requested"
    with transaction.atomic():
        audit_record(
            actor=actor,
            action=action,
            target=deployment,
            details={"from_version": deployment.version.number, "to_version": version.number},
        )
        _event(
            deployment,
            f"{'rollback' if rollback else 'update'} to v{version.number} "
            f"requested by {actor.name}",
        )
        _enqueue("update", deployment.pk, actor.request_id, version_id=version.pk)
    return deployment


def deployment_rollback(*, deployment: Deployment, actor: Actor) -> Deployment:
    if deployment.previous_version_id is None:
        raise ConflictError("there is no previous version to roll back to")
    return deployment_update(
        deployment=deployment, version=deployment.previous_version, actor=actor, rollback=True
    )


def deployment_delete(*, deployment: Deployment, actor: Actor) -> None:
    """Remove the replicas now (idempotent), then the row; builds' images stay cached."""
    runtime = _runtime(deployment)
    for status in runtime.list_replicas(deployment.name):
        runtime.remove_replica(status.name)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="deployment.deleted",
            target=deployment,
            details={"version": deployment.version.number},
        )
        deployment.delete()


# --------------------------------------------------------------------------- task bodies


def build_spec(deployment: Deployment, version: ModelVersion) -> BuildSpec:
    schema = version.schema or {}
    return BuildSpec(
        deployment=deployment.name,
        model=version.model.name,
        version=version.number,
        artifact_path=artifact_path(version.artifact_sha256),
        artifact_sha256=version.artifact_sha256,
        fmt=version.format,
        requirements=version.python_requirements,
        columns=schema.get("columns"),
        reference=reference_rows(version.input_example, schema),
        base_image=settings.PORTAL_BASE_IMAGE,
        wheelhouse=Path(settings.PORTAL_WHEELHOUSE),
        server_dir=SERVER_DIR,
    )


def deployment_build(*, deployment: Deployment, version: ModelVersion) -> BuildResult:
    """Build (or find) the image for a version, streaming the log into the Build row."""
    # A build still marked running belongs to an attempt whose worker died (this one retries).
    Build.objects.filter(deployment=deployment, status=Build.Status.BUILDING).update(
        status=Build.Status.FAILED,
        error="interrupted: its worker stopped",
        finished_at=timezone.now(),
    )
    build = Build.objects.create(deployment=deployment, version=version)
    lines: list[str] = []
    last_flush = time.monotonic()

    def on_line(line: str) -> None:
        nonlocal last_flush
        lines.append(line.rstrip("\n"))
        if time.monotonic() - last_flush > 0.5:
            last_flush = time.monotonic()
            Build.objects.filter(pk=build.pk).update(log="\n".join(lines[-2000:]))
            _heartbeat(deployment)

    started = time.monotonic()
    try:
        result = _runtime(deployment).build(build_spec(deployment, version), log=on_line)
    except Exception as exc:
        Build.objects.filter(pk=build.pk).update(
            status=Build.Status.FAILED,
            log="\n".join(lines[-2000:]),
            error=str(exc)[:4000],
            finished_at=timezone.now(),
            duration_s=time.monotonic() - started,
        )
        raise
    Build.objects.filter(pk=build.pk).update(
        status=Build.Status.SUCCEEDED,
        log="\n".join(lines[-2000:]),
        image_ref=result.ref,
        image_digest=result.digest or "",
        image_size=result.size_bytes,
        cached=result.cached,
        finished_at=timezone.now(),
        duration_s=time.monotonic() - started,
    )
    return result


def _limits(deployment: Deployment) -> ReplicaLimits:
    return ReplicaLimits(
        memory_mb=deployment.memory_mb,
        cpus=deployment.cpus,
        pids=deployment.pids_limit,
        batch_max_size=deployment.batch_max_size,
        batch_max_wait_ms=deployment.batch_max_wait_ms,
    )


def _start_replicas(
    deployment: Deployment, version: ModelVersion, build: BuildResult, indexes: list[int]
) -> list[Any]:
    runtime = _runtime(deployment)
    # The image holds the encrypted artifact; each replica gets its data key at start.
    spec = dataclasses.replace(
        build_spec(deployment, version), model_key=artifact_data_key(version.artifact_sha256)
    )
    started = []
    for index in indexes:
        status = runtime.start_replica(
            deployment=deployment.name,
            index=index,
            build=build,
            spec=spec,
            limits=_limits(deployment),
            publish_host=settings.PORTAL_PUBLISH_HOST,
        )
        started.append(status)
        _heartbeat(deployment)
    healthy = []
    for status in started:
        ok = runtime.wait_healthy(status, timeout=settings.PORTAL_START_TIMEOUT)
        _heartbeat(deployment)
        healthy.append(ok)
        _record_replica(deployment, status, version.number, healthy=ok)
    return [s for s, ok in zip(started, healthy, strict=True) if not ok]


def _record_replica(
    deployment: Deployment, status: Any, version_number: int, *, healthy: bool
) -> None:
    Replica.objects.update_or_create(
        name=status.name,
        defaults={
            "deployment": deployment,
            "index": status.index,
            "version_number": version_number,
            "endpoint": status.endpoint or "",
            "healthy": healthy,
            "state": "running" if healthy else status.state,
            "detail": status.detail or "",
        },
    )


def deployment_fail(*, deployment: Deployment, reason: str, request_id: str = "") -> None:
    """The one way a deployment ends failed: state, reason, event and audit together."""
    with transaction.atomic():
        if _set_state(deployment, State.FAILED, message=f"failed: {reason[:300]}", reason=reason):
            audit_record(
                actor=Actor.system("worker", request_id),
                action="deployment.failed",
                target=deployment,
                outcome="failure",
                details={"reason": reason[:1000]},
            )


def deployment_deploy(*, deployment_id: int, request_id: str = "", restart: bool = False) -> None:
    """pending -> building -> starting -> running (or failed). Safe to run again."""
    claimed = Deployment.objects.filter(
        pk=deployment_id,
        state__in=[State.PENDING, State.BUILDING, State.STARTING],
        desired_state=Deployment.Desired.RUNNING,
    ).update(
        state=State.BUILDING,
        state_changed_at=timezone.now(),
        heartbeat_at=timezone.now(),
        work_attempts=F("work_attempts") + 1,
    )
    if not claimed:
        return
    deployment = Deployment.objects.select_related("version__model").get(pk=deployment_id)
    # Log lines beat too, but a docker build step can be silent for minutes.
    beat = Deployment.objects.filter(pk=deployment_id, state__in=Deployment.ACTIVE_STATES)
    with beating(lambda: beat.update(heartbeat_at=timezone.now()), name=deployment.name):
        _deploy_claimed(deployment, request_id=request_id, restart=restart)


def _deploy_claimed(deployment: Deployment, *, request_id: str, restart: bool) -> None:
    _event(deployment, f"building image for v{deployment.version.number}", State.BUILDING)
    version = deployment.version
    try:
        build = deployment_build(deployment=deployment, version=version)
    except Exception as exc:  # noqa: BLE001 - any build failure is shown on the page
        deployment_fail(deployment=deployment, reason=f"build failed: {exc}", request_id=request_id)
        return
    if not _set_state(
        deployment,
        State.STARTING,
        expected=(State.BUILDING,),
        message=f"image ready ({'cached' if build.cached else 'built'}); "
        f"starting {deployment.replicas} replica(s)",
    ):
        return
    runtime = _runtime(deployment)
    if restart:
        for status in runtime.list_replicas(deployment.name):
            runtime.remove_replica(status.name)
        Replica.objects.filter(deployment=deployment).delete()
    try:
        failed = _start_replicas(deployment, version, build, list(range(deployment.replicas)))
    except Exception as exc:  # noqa: BLE001 - shown on the page
        deployment_fail(
            deployment=deployment, reason=f"could not start replicas: {exc}", request_id=request_id
        )
        return
    if failed:
        deployment_fail(
            deployment=deployment,
            request_id=request_id,
            reason=(
                f"{len(failed)} of {deployment.replicas} replica(s) did not become healthy within "
                f"{settings.PORTAL_START_TIMEOUT}s: "
                + "; ".join(s.detail or s.state for s in failed)
            ),
        )
        return
    with transaction.atomic():
        if _set_state(
            deployment,
            State.RUNNING,
            expected=(State.STARTING,),
            message=f"running v{version.number} with {deployment.replicas} healthy replica(s)",
            reason="",
        ):
            Deployment.objects.filter(pk=deployment.pk).update(work_attempts=0)
            audit_record(
                actor=Actor.system("worker", request_id),
                action="deployment.running",
                target=deployment,
                details={"version": version.number},
            )


def _latest_build(deployment: Deployment, version: ModelVersion) -> BuildResult | None:
    build = (
        Build.objects.filter(deployment=deployment, version=version, status=Build.Status.SUCCEEDED)
        .order_by("-id")
        .first()
    )
    if build is None:
        return None
    if not _runtime(deployment).has_image(build.image_ref):
        # Pruned (by images_prune or by hand): build it again, from the layer cache if any.
        _event(deployment, f"image {build.image_ref} is gone; building it again")
        return None
    return BuildResult(
        ref=build.image_ref,
        digest=build.image_digest,
        size_bytes=build.image_size or 0,
        log="",
        duration_s=0.0,
        cached=True,
    )


def _answers(status: Any) -> bool:
    """Liveness: the replica's /health answers within PORTAL_LIVENESS_TIMEOUT on one of
    PORTAL_LIVENESS_TRIES tries, a second apart. A server that is merely busy gets that long;
    a frozen one is found on the first reconcile instead of after the runtime's own checks."""
    for attempt in range(max(1, settings.PORTAL_LIVENESS_TRIES)):
        if attempt:
            time.sleep(1)
        if probe_health(
            status.endpoint,
            timeout=settings.PORTAL_LIVENESS_TIMEOUT,
            token=replica_token(status.deployment),
        ):
            return True
    return False


def deployment_converge(*, deployment_id: int, request_id: str = "") -> bool:
    """Make the healthy replicas of the current version number `replicas`.

    Dead, unhealthy or hung replicas are replaced, extra ones removed, missing ones started
    on indexes not in use. Used by scale and by the reconciler, one worker at a time per
    deployment (a replica that another worker is still starting must not be judged
    unhealthy and replaced); returns False when another worker holds the deployment.
    """
    hold = settings.PORTAL_BUILD_TIMEOUT + settings.PORTAL_START_TIMEOUT + 60
    with alone(f"portal:converge-{deployment_id}", timeout=hold) as mine:
        if mine:
            _converge(deployment_id, request_id)
        return mine


def _converge(deployment_id: int, request_id: str) -> None:
    deployment = Deployment.objects.select_related("version__model").get(pk=deployment_id)
    if deployment.desired_state != Deployment.Desired.RUNNING:
        return
    if deployment.state not in (State.RUNNING, State.DEGRADED):
        return
    runtime = _runtime(deployment)
    observed = runtime.list_replicas(deployment.name)
    current = sorted(
        (s for s in observed if s.version == deployment.version.number), key=lambda s: s.index
    )
    replaced = 0
    for status in current:
        condition = status.state
        if status.state == "running":
            if _answers(status):
                Replica.objects.filter(name=status.name).update(healthy=True, state="running")
                continue
            # The runtime still calls it healthy (Docker needs several failed checks), but it
            # answers nothing: a hung server. Replace it now.
            condition = "hanging: /health did not answer"
        # Gone, exited, unhealthy or hanging: replace it.
        runtime.remove_replica(status.name)
        Replica.objects.filter(name=status.name).delete()
        _event(deployment, f"replica {status.name} was {condition}; replacing it")
        replaced += 1
    alive = [s for s in current if Replica.objects.filter(name=s.name).exists()]
    for status in alive[deployment.replicas :]:
        runtime.remove_replica(status.name)
        Replica.objects.filter(name=status.name).delete()
    need = deployment.replicas - min(len(alive), deployment.replicas)
    if need > 0:
        used = {s.index for s in runtime.list_replicas(deployment.name)}
        indexes = [i for i in range(need + len(used) + 1) if i not in used][:need]
        build = _latest_build(deployment, deployment.version) or deployment_build(
            deployment=deployment, version=deployment.version
        )
        failed = _start_replicas(deployment, deployment.version, build, indexes)
        if failed:
            if deployment.state != State.DEGRADED:
                _set_state(
                    deployment,
                    State.DEGRADED,
                    message=f"{len(failed)} replica(s) unhealthy after restart",
                )
            return
        if replaced:
            audit_record(
                actor=Actor.system("reconciler", request_id),
                action="deployment.replicas_replaced",
                target=deployment,
                details={"replaced": replaced},
            )
    if deployment.state == State.DEGRADED:
        _set_state(
            deployment,
            State.RUNNING,
            expected=(State.DEGRADED,),
            message="all replicas healthy again",
        )


def deployment_stop_replicas(*, deployment_id: int, request_id: str = "") -> None:
    deployment = Deployment.objects.filter(pk=deployment_id).first()
    if deployment is None or deployment.desired_state != Deployment.Desired.STOPPED:
        return
    runtime = _runtime(deployment)
    for status in runtime.list_replicas(deployment.name):
        runtime.remove_replica(status.name)
    Replica.objects.filter(deployment=deployment).delete()
    with transaction.atomic():
        if _set_state(deployment, State.STOPPED, message="all replicas stopped"):
            audit_record(
                actor=Actor.system("worker", request_id),
                action="deployment.stopped",
                target=deployment,
            )


def deployment_switch_version(*, deployment_id: int, version_id: int, request_id: str = "") -> None:
    """Blue/green: start new replicas beside the old, switch traffic, then stop the old."""
    deployment = Deployment.objects.select_related("version__model").get(pk=deployment_id)
    new_version = ModelVersion.objects.select_related("model").get(pk=version_id)
    old_version = deployment.version
    if new_version.pk == old_version.pk:
        return
    runtime = _runtime(deployment)
    # The replicas this switch replaces: only they are removed after it (a rollback queued
    # meanwhile starts replicas of the old version again, which must survive).
    replaced = {
        s.name for s in runtime.list_replicas(deployment.name) if s.version == old_version.number
    }
    try:
        build = _latest_build(deployment, new_version) or deployment_build(
            deployment=deployment, version=new_version
        )
        # New replicas get indexes after the old ones, so both sets run side by side.
        offset = max([s.index for s in runtime.list_replicas(deployment.name)] + [-1]) + 1
        failed = _start_replicas(
            deployment, new_version, build, list(range(offset, offset + deployment.replicas))
        )
    except Exception as exc:  # noqa: BLE001 - shown on the page; old replicas keep serving
        failed, error = [True], str(exc)
    else:
        error = "; ".join(s.detail or s.state for s in failed)
    if failed:
        for status in runtime.list_replicas(deployment.name):
            if status.version == new_version.number:
                runtime.remove_replica(status.name)
                Replica.objects.filter(name=status.name).delete()
        _event(
            deployment,
            f"update to v{new_version.number} failed, v{old_version.number} keeps serving: {error}",
        )
        audit_record(
            actor=Actor.system("worker", request_id),
            action="deployment.update_failed",
            target=deployment,
            outcome="failure",
            details={"to_version": new_version.number, "error": error[:1000]},
        )
        return
    with transaction.atomic():
        # Switch: the proxy only routes to replicas of deployment.version.
        Deployment.objects.filter(pk=deployment.pk).update(
            version=new_version, previous_version=old_version
        )
        _event(deployment, f"traffic switched from v{old_version.number} to v{new_version.number}")
        audit_record(
            actor=Actor.system("worker", request_id),
            action="deployment.updated",
            target=deployment,
            details={"from_version": old_version.number, "to_version": new_version.number},
        )
    # Proxies cache replica lists for TARGET_TTL: let in-flight and cached routes drain first.
    time.sleep(DRAIN_SECONDS)
    for name in replaced:
        runtime.remove_replica(name)
        Replica.objects.filter(name=name).delete()


# --------------------------------------------------------------------------- reconciler


def reconcile(*, request_id: str = "") -> dict[str, int]:
    """Compare desired and observed state; repair the difference. Run by Celery beat."""
    from deployments_app import rollouts, tasks
    from models_app.services import model_version_requeue_stale

    summary = {"converged": 0, "requeued": 0, "failed": 0, "orphans_removed": 0}
    stale = timezone.now() - timezone.timedelta(seconds=settings.PORTAL_STALE_SECONDS)
    for deployment in Deployment.objects.filter(
        state__in=Deployment.ACTIVE_STATES, desired_state=Deployment.Desired.RUNNING
    ):
        beat = deployment.heartbeat_at or deployment.state_changed_at
        if beat > stale:
            continue
        if deployment.work_attempts >= settings.PORTAL_MAX_WORK_ATTEMPTS:
            deployment_fail(
                deployment=deployment,
                request_id=request_id,
                reason=(
                    f"stuck in {deployment.state}: no progress after "
                    f"{deployment.work_attempts} attempt(s)"
                ),
            )
            summary["failed"] += 1
        else:
            _event(
                deployment,
                f"no progress in {deployment.state} for {settings.PORTAL_STALE_SECONDS}s: retrying",
            )
            Deployment.objects.filter(pk=deployment.pk).update(heartbeat_at=timezone.now())
            tasks.deploy.delay(deployment.pk, request_id=request_id)
            summary["requeued"] += 1
    for deployment in Deployment.objects.filter(
        state__in=[State.RUNNING, State.DEGRADED], desired_state=Deployment.Desired.RUNNING
    ):
        try:
            if deployment_converge(deployment_id=deployment.pk, request_id=request_id):
                summary["converged"] += 1
            if rollouts.wanted_versions(deployment):  # candidates and shadow: theirs too
                rollouts.rollout_replicas(deployment_id=deployment.pk, request_id=request_id)
        except Exception:  # noqa: BLE001 - one broken deployment must not stop the others
            log.exception("reconcile failed for %s", deployment.name)
    for deployment in Deployment.objects.filter(
        state=State.STOPPING, desired_state=Deployment.Desired.STOPPED
    ):
        if deployment.state_changed_at < stale:
            tasks.stop.delay(deployment.pk, request_id=request_id)
    summary["orphans_removed"] = _remove_orphans()
    summary["validations_requeued"] = model_version_requeue_stale(
        older_than_seconds=settings.PORTAL_STALE_SECONDS, request_id=request_id
    )
    if summary["validations_requeued"]:
        log.info("queued validation again for %d quiet version(s)", summary["validations_requeued"])
    log.debug("reconcile: %s", summary)  # every PORTAL_RECONCILE_SECONDS: changes log above
    return summary


def images_prune(*, min_age_s: float | None = None, request_id: str = "") -> dict[str, Any]:
    """Remove the images (process builds) of this portal that no build record keeps: those of
    deleted deployments and superseded builds. Images a replica runs stay (the runtime
    refuses), and so do images younger than PORTAL_IMAGE_PRUNE_MIN_AGE (a build in flight
    is not recorded yet). Run by Celery beat every PORTAL_IMAGE_PRUNE_SECONDS."""
    if min_age_s is None:
        min_age_s = settings.PORTAL_IMAGE_PRUNE_MIN_AGE
    keep = set(Build.objects.exclude(image_ref="").values_list("image_ref", flat=True))
    summary: dict[str, Any] = {"runtimes": available_runtimes(), "removed": [], "freed_bytes": 0}
    # Every backend this machine has: deployments choose theirs, and a deleted one's builds
    # stay behind on whichever it used.
    for name in summary["runtimes"]:
        pruned = get_runtime(name).prune_images(keep, min_age_s=min_age_s)
        summary["removed"] += [p.ref for p in pruned]
        summary["freed_bytes"] += sum(p.size_bytes for p in pruned)
    if summary["removed"]:
        audit_record(
            actor=Actor.system("image-pruner", request_id),
            action="runtime.images_pruned",
            target_type="runtime",
            target_name=", ".join(summary["runtimes"]),
            details=summary,
        )
        log.info("pruned %d image(s), %d bytes", len(summary["removed"]), summary["freed_bytes"])
    return summary


def _remove_orphans() -> int:
    """Remove labelled replicas that no deployment wants (deleted, stopped, old version)."""
    from deployments_app import rollouts

    wanted = set()
    for d in Deployment.objects.select_related("version", "shadow_version").filter(
        desired_state=Deployment.Desired.RUNNING
    ):
        wanted |= {(d.name, number) for number in [d.version.number, *rollouts.wanted_versions(d)]}
    busy = set(
        Deployment.objects.exclude(
            state__in=[State.RUNNING, State.DEGRADED, State.STOPPED, State.FAILED]
        ).values_list("name", flat=True)
    )
    removed = 0
    for name in {d.runtime for d in Deployment.objects.all()} | {runtime_name()}:
        runtime = get_runtime(name)
        for status in runtime.list_replicas(None):
            if status.deployment in busy:
                continue  # an update or a start is in flight: its new replicas are wanted
            if (status.deployment, status.version) not in wanted:
                runtime.remove_replica(status.name)
                Replica.objects.filter(name=status.name).delete()
                log.info("removed replica %s: no deployment wants it", status.name)
                removed += 1
    return removed
