"""Registry business logic: upload, validate, approve, alias, archive, delete. Every change is
audited."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Max, ProtectedError, Q
from django.utils import timezone

from models_app.models import NAME_VALIDATOR, ModelAlias, ModelVersion, RegisteredModel
from models_app.storage import artifact_path, artifact_plaintext_file, artifact_store
from portal import jsonlimits
from portal.audit import Actor, audit_record
from portal.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError
from portal.heartbeat import beating

MAX_EXAMPLE_ROWS = 100


def parse_input_example(text: str) -> tuple[list[Any] | None, list[str] | None]:
    """Turn the uploader's example (JSON rows, records, one row, or small CSV) into rows.

    Returns (rows, columns); columns is set for records and CSV with a header.
    """
    text = (text or "").strip()
    if not text:
        return None, None
    if len(text) > settings.PORTAL_JSON_MAX_BYTES:
        raise ApplicationError(
            f"the input example is larger than {settings.PORTAL_JSON_MAX_BYTES} bytes"
        )
    if text[0] in "[{":
        try:
            data = jsonlimits.loads(text)
        except jsonlimits.JSONLimitError as exc:
            raise ApplicationError(f"the input example is not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            data = data.get("instances", data.get("inputs", [data]))
        if not isinstance(data, list) or not data:
            raise ApplicationError("the input example must be a non-empty list of rows")
        if all(isinstance(v, int | float | str | bool) or v is None for v in data):
            data = [data]  # one row given as a flat list
        if all(isinstance(r, dict) for r in data):
            columns = list(data[0].keys())
            rows = [[r.get(c) for c in columns] for r in data]
            return _check_rows(rows), columns
        if all(isinstance(r, list) for r in data):
            return _check_rows(data), None
        raise ApplicationError("the input example must be rows (lists) or records (objects)")
    reader = csv.reader(io.StringIO(text))
    lines = [row for row in reader if row]
    if not lines:
        return None, None
    header = lines[0]
    has_header = not all(_is_number(v) for v in header)
    rows = [[float(v) if _is_number(v) else v for v in row] for row in lines[has_header:]]
    return _check_rows(rows), (header if has_header else None)


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _check_rows(rows: list[Any]) -> list[Any]:
    if not rows:
        raise ApplicationError("the input example has no rows")
    if len(rows) > MAX_EXAMPLE_ROWS:
        raise ApplicationError(f"the input example may have at most {MAX_EXAMPLE_ROWS} rows")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ApplicationError(
                f"row {i} of the input example has {len(row)} values, row 0 has {width}"
            )
    return rows


def _check_name(name: str) -> str:
    try:
        NAME_VALIDATOR(name)
    except ValidationError as exc:
        raise ApplicationError(f"invalid model name '{name}': {exc.messages[0]}") from exc
    return name


def model_version_upload(
    *,
    model_name: str,
    chunks: Iterable[bytes],
    actor: Actor,
    user: Any = None,
    filename: str = "",
    description: str = "",
    example_text: str = "",
    tags: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    sklearn_version: str = "",
) -> tuple[ModelVersion, bool]:
    """Store the bytes, create (or find) the version, and queue validation.

    Returns (version, created). Uploading bytes that the model already has returns the
    existing version: storage is content-addressed.
    """
    _check_name(model_name)
    rows, columns = parse_input_example(example_text)
    stored = artifact_store(chunks)
    with transaction.atomic():
        model, model_created = RegisteredModel.objects.select_for_update().get_or_create(
            name=model_name, defaults={"created_by": user if user and user.pk else None}
        )
        if model_created:
            audit_record(actor=actor, action="model.created", target=model)
        existing = model.versions.filter(artifact_sha256=stored.sha256).first()
        if existing is not None:
            audit_record(
                actor=actor,
                action="model_version.upload_deduplicated",
                target=existing,
                details={"sha256": stored.sha256},
            )
            return existing, False
        number = (model.versions.aggregate(n=Max("number"))["n"] or 0) + 1
        try:
            version = ModelVersion.objects.create(
                model=model,
                number=number,
                description=description,
                tags=list(tags or []),
                metrics=dict(metrics or {}),
                artifact_sha256=stored.sha256,
                artifact_size=stored.size,
                original_filename=filename[:255],
                declared_sklearn_version=sklearn_version.strip(),
                input_example={"rows": rows, "columns": columns} if rows else None,
                uploaded_by=user if user and user.pk else None,
            )
        except IntegrityError as exc:  # a concurrent upload of the same bytes won the race
            raise ConflictError("this file is being uploaded to this model right now") from exc
        audit_record(
            actor=actor,
            action="model_version.uploaded",
            target=version,
            details={"sha256": stored.sha256, "size": stored.size, "filename": filename[:255]},
        )
        transaction.on_commit(lambda: _enqueue_validation(version.pk, actor.request_id))
    return version, True


def _enqueue_validation(version_id: int, request_id: str) -> None:
    from models_app.tasks import validate_model_version

    validate_model_version.delay(version_id, request_id=request_id)


MAX_VALIDATION_ATTEMPTS = 3


def _claimable() -> Q:
    """Versions a worker may start validating: queued, or abandoned by a dead worker."""
    quiet_since = timezone.now() - timedelta(seconds=settings.PORTAL_STALE_SECONDS)
    abandoned = Q(validation_heartbeat_at__isnull=True) | Q(validation_heartbeat_at__lt=quiet_since)
    return Q(status=ModelVersion.Status.UPLOADED) | (
        Q(status=ModelVersion.Status.VALIDATING) & abandoned
    )


def model_version_validate(*, version_id: int, request_id: str = "") -> ModelVersion | None:
    """Run the validation pipeline on a version. Safe to call again after a crash.

    Claims the version with a compare-and-set (uploaded, or validating with a quiet
    heartbeat -> validating), so a duplicate message never validates a version twice at
    once; a version already ready or invalid is left alone.
    """
    from models_app.validation.pipeline import validate_artifact

    claimed = (
        ModelVersion.objects.filter(_claimable(), pk=version_id)
        .filter(validation_attempts__lt=MAX_VALIDATION_ATTEMPTS)
        .update(
            status=ModelVersion.Status.VALIDATING,
            validation_attempts=F("validation_attempts") + 1,
            validation_heartbeat_at=timezone.now(),
        )
    )
    if not claimed:
        version = ModelVersion.objects.filter(pk=version_id).first()
        if ModelVersion.objects.filter(_claimable(), pk=version_id).exists():
            return model_version_invalidate(
                version=version,
                request_id=request_id,
                reason=f"validation did not finish after {MAX_VALIDATION_ATTEMPTS} attempts",
                report=version.report,
            )
        return version  # finished, gone, or being validated by a live worker
    version = ModelVersion.objects.select_related("model").get(pk=version_id)
    example = version.input_example or {}
    beat = ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.VALIDATING)
    with (
        beating(lambda: beat.update(validation_heartbeat_at=timezone.now()), name=str(version)),
        artifact_plaintext_file(version.artifact_sha256) as plaintext,
    ):
        outcome = validate_artifact(
            path=plaintext,
            declared_sklearn_version=version.declared_sklearn_version,
            example_rows=example.get("rows"),
            example_columns=example.get("columns"),
        )
    if not outcome.ok:
        return model_version_invalidate(
            version=version, request_id=request_id, reason=outcome.reason, report=outcome.report
        )
    with transaction.atomic():
        ModelVersion.objects.filter(pk=version.pk).update(
            status=ModelVersion.Status.READY,
            format=outcome.format,
            sklearn_version=outcome.sklearn_version,
            python_requirements=outcome.requirements,
            estimator_class=outcome.estimator_class,
            task=outcome.task,
            schema=outcome.schema,
            input_example=outcome.example,
            example_output=outcome.example_output,
            report=outcome.report,
            rejection_reason="",
            validated_at=timezone.now(),
        )
        version.refresh_from_db()
        audit_record(
            actor=Actor.system("validator", request_id),
            action="model_version.ready",
            target=version,
            details={
                "sklearn_version": outcome.sklearn_version,
                "estimator": outcome.estimator_class,
            },
        )
    return version


def model_version_requeue_stale(*, older_than_seconds: float, request_id: str = "") -> int:
    """Queue validation again for versions nobody is working on; returns how many.

    A worker that dies mid-validation leaves its message unacknowledged until the broker's
    visibility timeout (an hour with Redis), and a message lost before it reached the
    broker never comes. Uploaded or validating versions whose heartbeat (or upload) is
    older than `older_than_seconds` go back to `uploaded` and are queued again; the
    attempt limit of `model_version_validate` still ends a version that keeps failing.
    """
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    quiet = Q(validation_heartbeat_at__lt=cutoff) | Q(
        validation_heartbeat_at__isnull=True, created_at__lt=cutoff
    )
    statuses = [ModelVersion.Status.UPLOADED, ModelVersion.Status.VALIDATING]
    requeued = 0
    for version in ModelVersion.objects.filter(quiet, status__in=statuses).select_related("model"):
        with transaction.atomic():
            changed = ModelVersion.objects.filter(quiet, pk=version.pk, status__in=statuses).update(
                status=ModelVersion.Status.UPLOADED, validation_heartbeat_at=timezone.now()
            )
            if not changed:
                continue  # a worker claimed or finished it meanwhile
            audit_record(
                actor=Actor.system("reconciler", request_id),
                action="model_version.validation_requeued",
                target=version,
                details={"was": version.status, "attempts": version.validation_attempts},
            )
            transaction.on_commit(
                lambda pk=version.pk: _enqueue_validation(pk, request_id), robust=True
            )
        requeued += 1
    return requeued


def model_version_invalidate(
    *, version: ModelVersion, reason: str, report: dict[str, Any], request_id: str = ""
) -> ModelVersion:
    """Validation failed: the version is `invalid` (not "rejected", an approver's word)."""
    with transaction.atomic():
        ModelVersion.objects.filter(pk=version.pk).update(
            status=ModelVersion.Status.INVALID,
            rejection_reason=reason[:5000],
            report=report,
            validated_at=timezone.now(),
        )
        version.refresh_from_db()
        audit_record(
            actor=Actor.system("validator", request_id),
            action="model_version.invalid",
            target=version,
            outcome="failure",
            details={"reason": reason[:1000]},
        )
    return version


def model_version_approve(
    *, version: ModelVersion, user: Any, actor: Actor, approve: bool, comment: str = ""
) -> ModelVersion:
    """Approve or reject a ready version. Nobody approves their own upload; a rejection says
    why (the comment), so the uploader and later readers know."""
    if version.status != ModelVersion.Status.READY:
        raise ConflictError(f"only ready versions can be reviewed; this one is {version.status}")
    if version.uploaded_by_id is not None and version.uploaded_by_id == user.pk:
        raise PermissionDeniedError("you uploaded this version: another approver must review it")
    comment = comment.strip()
    if not approve and not comment:
        raise ApplicationError("rejecting a version needs a comment saying why")
    with transaction.atomic():
        version.approval = (
            ModelVersion.Approval.APPROVED if approve else ModelVersion.Approval.REJECTED
        )
        version.approval_by = user
        version.approval_at = timezone.now()
        version.approval_comment = comment
        version.save(update_fields=["approval", "approval_by", "approval_at", "approval_comment"])
        if not approve:
            # A rejected version may not stay in production.
            ModelAlias.objects.filter(version=version, name=ModelAlias.PRODUCTION).delete()
        audit_record(
            actor=actor,
            action=f"model_version.{version.approval}",
            target=version,
            details={"comment": comment[:1000]},
        )
    return version


def model_alias_set(
    *, model: RegisteredModel, name: str, version_number: int, user: Any, actor: Actor
) -> ModelAlias:
    """Point an alias at a version (creating or moving it): one audited action."""
    _check_name(name)
    version = model.versions.filter(number=version_number).first()
    if version is None:
        raise NotFoundError(f"model '{model.name}' has no version {version_number}")
    if version.status != ModelVersion.Status.READY:
        raise ConflictError(f"version {version.number} is {version.status}, not ready")
    if name == ModelAlias.PRODUCTION and version.approval != ModelVersion.Approval.APPROVED:
        raise ConflictError("only approved versions may take the 'production' alias")
    with transaction.atomic():
        alias = ModelAlias.objects.select_for_update().filter(model=model, name=name).first()
        previous = alias.version.number if alias else None
        if alias is None:
            alias = ModelAlias.objects.create(
                model=model, name=name, version=version, updated_by=user
            )
        else:
            alias.version = version
            alias.updated_by = user
            alias.save(update_fields=["version", "updated_by", "updated_at"])
        audit_record(
            actor=actor,
            action="model_alias.set",
            target=alias,
            details={"alias": name, "from_version": previous, "to_version": version.number},
        )
    return alias


def model_alias_delete(*, model: RegisteredModel, name: str, actor: Actor) -> None:
    with transaction.atomic():
        alias = ModelAlias.objects.filter(model=model, name=name).first()
        if alias is None:
            raise NotFoundError(f"model '{model.name}' has no alias '{name}'")
        audit_record(
            actor=actor,
            action="model_alias.deleted",
            target=alias,
            details={"alias": name, "version": alias.version.number},
        )
        alias.delete()


def max_upload_mb() -> int:
    return settings.PORTAL_MAX_UPLOAD_MB


# --------------------------------------------------------------------------- archive, delete


def _archive_target(
    target: RegisteredModel | ModelVersion, *, archived: bool, actor: Actor
) -> None:
    kind = "model" if isinstance(target, RegisteredModel) else "model_version"
    with transaction.atomic():
        changed = (
            type(target)
            .objects.filter(pk=target.pk, archived_at__isnull=archived)
            .update(archived_at=timezone.now() if archived else None)
        )
        target.refresh_from_db(fields=["archived_at"])
        if not changed:
            return  # already so: nothing happened, nothing to audit
        audit_record(
            actor=actor, action=f"{kind}.{'archived' if archived else 'unarchived'}", target=target
        )


def model_archive(*, model: RegisteredModel, actor: Actor, archived: bool = True) -> None:
    """Hide a model (and so all its versions) from lists and deploys; artifacts stay."""
    _archive_target(model, archived=archived, actor=actor)


def model_version_archive(*, version: ModelVersion, actor: Actor, archived: bool = True) -> None:
    """Hide a version from lists and deploys; its artifact stays (it can be unarchived)."""
    _archive_target(version, archived=archived, actor=actor)


def _protected_message(what: str, exc: ProtectedError) -> str:
    names = sorted({str(getattr(o, "deployment", o)) for o in exc.protected_objects})
    return (
        f"{what} is still referenced by deployment(s) {', '.join(names)} (serving it, kept as "
        "the version to roll back to, or holding its build): delete those deployments first"
    )


def model_version_delete(*, version: ModelVersion, actor: Actor) -> None:
    """Delete a version nothing serves, its aliases, and its artifact unless another version
    holds the same bytes. Deployments protect the versions they reference."""
    sha = version.artifact_sha256
    name = str(version)
    try:
        with transaction.atomic():
            audit_record(
                actor=actor,
                action="model_version.deleted",
                target=version,
                details={"sha256": sha, "aliases": sorted(a.name for a in version.aliases.all())},
            )
            version.aliases.all().delete()
            version.delete()
            transaction.on_commit(lambda: _artifacts_discard([sha]))
    except ProtectedError as exc:
        raise ConflictError(_protected_message(name, exc)) from exc


def model_delete(*, model: RegisteredModel, actor: Actor) -> None:
    """Delete a model with all its versions and aliases when no deployment references it."""
    versions = list(model.versions.all())
    shas = [v.artifact_sha256 for v in versions]
    try:
        with transaction.atomic():
            audit_record(
                actor=actor,
                action="model.deleted",
                target=model,
                details={"versions": [v.number for v in versions]},
            )
            model.aliases.all().delete()
            for version in versions:
                audit_record(
                    actor=actor,
                    action="model_version.deleted",
                    target=version,
                    details={"sha256": version.artifact_sha256, "with_model": True},
                )
                version.delete()
            model.delete()
            transaction.on_commit(lambda: _artifacts_discard(shas))
    except ProtectedError as exc:
        raise ConflictError(_protected_message(f"model '{model.name}'", exc)) from exc


def _artifacts_discard(shas: list[str]) -> None:
    """Remove the artifact files no remaining version shares (storage is content-addressed:
    another model may hold the same bytes)."""
    kept = set(
        ModelVersion.objects.filter(artifact_sha256__in=shas).values_list(
            "artifact_sha256", flat=True
        )
    )
    for sha in set(shas) - kept:
        artifact_path(sha).unlink(missing_ok=True)
