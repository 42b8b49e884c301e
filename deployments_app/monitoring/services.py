"""Capture policies, captured records (retention, export), drift references and drift runs."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments_app.models import (
    CapturePolicy,
    Deployment,
    DriftReference,
    DriftSnapshot,
    PredictionLog,
)
from deployments_app.monitoring import capture, stats
from models_app.models import ModelVersion
from models_app.storage import UploadTooLarge, artifact_store
from portal.audit import Actor, audit_record
from portal.errors import ApplicationError

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("csv", "jsonl")
REFERENCE_ROWS = 1000  # reference rows the model is asked to predict (one call's limit)


# --------------------------------------------------------------------------- capture policy


def capture_policy_get(*, deployment: Deployment) -> dict[str, Any]:
    policy = CapturePolicy.objects.filter(deployment=deployment).first()
    return {
        "percent": deployment.capture_percent,
        "version": policy.version if policy else 0,
        "inputs": policy.inputs if policy else True,
        "outputs": policy.outputs if policy else True,
        "fields": policy.fields if policy else {},
        "retention_days": policy.retention_days if policy else settings.PORTAL_CAPTURE_DAYS,
        "updated_at": policy.updated_at if policy else None,
    }


def capture_policy_set(
    *,
    deployment: Deployment,
    actor: Actor,
    percent: int,
    inputs: bool = True,
    outputs: bool = True,
    fields: Any = None,
    retention_days: int | None = None,
) -> dict[str, Any]:
    """Set what of the deployment's calls is captured; a new policy version when it changed."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ApplicationError("percent must be a whole number from 0 to 100")
    clean = capture.validate_fields(fields, deployment.version.schema or {})
    days = settings.PORTAL_CAPTURE_DAYS if retention_days is None else retention_days
    limit = settings.PORTAL_PREDICTION_LOG_DAYS
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= limit:
        raise ApplicationError(
            f"retention_days must be from 1 to {limit} (records live in the prediction log, "
            "kept PORTAL_PREDICTION_LOG_DAYS days)"
        )
    with transaction.atomic():
        policy, created = CapturePolicy.objects.select_for_update().get_or_create(
            deployment=deployment,
            defaults={"inputs": inputs, "outputs": outputs, "fields": clean,
                      "retention_days": days, "updated_by_id": actor.id},
        )  # fmt: skip
        before = {"inputs": policy.inputs, "outputs": policy.outputs, "fields": policy.fields}
        after = {"inputs": inputs, "outputs": outputs, "fields": clean}
        if not created and before != after:
            policy.version += 1
        policy.inputs, policy.outputs, policy.fields = inputs, outputs, clean
        policy.retention_days, policy.updated_by_id = days, actor.id
        policy.save()
        previous = deployment.capture_percent
        Deployment.objects.filter(pk=deployment.pk).update(capture_percent=percent)
        audit_record(
            actor=actor,
            action="deployment.capture_policy_set",
            target=deployment,
            details={"percent": percent, "previous_percent": previous,
                     "policy_version": policy.version, "inputs": inputs, "outputs": outputs,
                     "fields": clean, "retention_days": days},
        )  # fmt: skip
    deployment.refresh_from_db()
    return capture_policy_get(deployment=deployment)


# --------------------------------------------------------------------------- captured records


def captured_records(
    *, deployment: Deployment, since: datetime | None = None, until: datetime | None = None
):
    """The deployment's log rows that carry a captured record, oldest first."""
    rows = PredictionLog.objects.filter(
        deployment_name=deployment.name, payload__isnull=False
    ).order_by("created_at", "id")
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    if until is not None:
        rows = rows.filter(created_at__lt=until)
    return rows


EXPORT_FIELDS = ("created_at", "request_id", "version_number", "status_code", "policy")


def capture_export(
    *,
    deployment: Deployment,
    actor: Actor,
    fmt: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[str]:
    """The captured records as CSV (one line per row of a call) or JSON Lines (one per call).
    Audited when asked; the lines are produced as the response streams."""
    if fmt not in EXPORT_FORMATS:
        raise ApplicationError(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    records = captured_records(deployment=deployment, since=since, until=until)
    audit_record(
        actor=actor,
        action="deployment.capture_exported",
        target=deployment,
        details={"format": fmt, "since": since, "until": until, "records": records.count()},
    )
    return _jsonl(records) if fmt == "jsonl" else _csv(deployment, records)


def _iterate(records) -> Iterable[PredictionLog]:
    return records.only(
        "created_at", "request_id", "version_number", "status_code", "payload"
    ).iterator(chunk_size=1000)


def _jsonl(records) -> Iterator[str]:
    for row in _iterate(records):
        line = {
            "created_at": row.created_at.isoformat(),
            "request_id": row.request_id,
            "version": row.version_number,
            "status_code": row.status_code,
        } | row.payload
        yield json.dumps(line) + "\n"


def _csv(deployment: Deployment, records) -> Iterator[str]:
    columns = capture.feature_names(deployment.version.schema or {})
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow([*EXPORT_FIELDS, *columns, "prediction"])
    yield flush()
    for row in _iterate(records):
        record = row.payload
        names = record.get("columns") or columns
        predictions = (record.get("outputs") or {}).get("predictions") or []
        head = [row.created_at.isoformat(), row.request_id, row.version_number,
                row.status_code, record.get("policy")]  # fmt: skip
        for i, values in enumerate(record.get("inputs") or [[]]):
            by_name = dict(zip(names, values, strict=False))
            prediction = predictions[i] if i < len(predictions) else ""
            writer.writerow([*head, *(by_name.get(c, "") for c in columns), prediction])
        yield flush()


def capture_retention_run(*, now: datetime | None = None) -> dict[str, int]:
    """Clear captured records older than each deployment's window (the log rows stay for the
    log's own retention) and drift snapshots older than PORTAL_DRIFT_DAYS."""
    now = now or timezone.now()
    days = dict(CapturePolicy.objects.values_list("deployment__name", "retention_days"))
    cleared: dict[str, int] = {}
    names = set(days) | set(
        Deployment.objects.filter(capture_percent__gt=0).values_list("name", flat=True)
    )
    for name in sorted(names):
        cutoff = now - timedelta(days=days.get(name, settings.PORTAL_CAPTURE_DAYS))
        count = PredictionLog.objects.filter(
            deployment_name=name, created_at__lt=cutoff, payload__isnull=False
        ).update(payload=None)
        if count:
            cleared[name] = count
    snapshots, _ = DriftSnapshot.objects.filter(
        window_end__lt=now - timedelta(days=settings.PORTAL_DRIFT_DAYS)
    ).delete()
    if cleared or snapshots:
        audit_record(
            actor=Actor.system("capture-retention"),
            action="capture.retention_applied",
            target_type="deployment",
            details={"records_cleared": cleared, "drift_snapshots_removed": snapshots},
        )
    return cleared


# --------------------------------------------------------------------------- drift reference


def _read_csv(data: bytes, schema: dict[str, Any]) -> list[list[Any]]:
    """Rows of a reference CSV in the schema's column order, values typed by the schema."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApplicationError("the reference dataset must be UTF-8 CSV") from exc
    try:
        return _typed_rows(csv.reader(io.StringIO(text)), schema)
    except csv.Error as exc:  # NUL bytes, unbalanced quotes
        raise ApplicationError(f"the reference dataset is not valid CSV: {exc}") from exc


def _read_parquet(data: bytes, schema: dict[str, Any]) -> list[list[Any]]:
    """Rows of a reference Parquet file, checked and typed as a CSV's are (its values read
    as the text a CSV would hold: one set of column and type rules for both)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ApplicationError(f"the reference dataset is not valid Parquet: {exc}") from exc
    header = table.column_names
    records = (["" if v is None else str(v) for v in row.values()] for row in table.to_pylist())
    return _typed_rows(iter([header, *records]), schema)


def _read_reference(data: bytes, filename: str, schema: dict[str, Any]) -> list[list[Any]]:
    if filename.lower().endswith((".parquet", ".pq")) or data[:4] == b"PAR1":
        return _read_parquet(data, schema)
    return _read_csv(data, schema)


def _typed_rows(reader, schema: dict[str, Any]) -> list[list[Any]]:
    names = capture.feature_names(schema)
    columns = schema.get("columns")
    types = schema.get("column_types") or {}
    header = next(reader, None)
    if not header:
        raise ApplicationError("the reference dataset is empty (a header row is needed)")
    header = [h.strip() for h in header]
    if columns:
        missing = [c for c in columns if c not in header]
        if missing:
            raise ApplicationError(
                f"the reference dataset lacks column '{missing[0]}'", extra={"field": missing[0]}
            )
        unknown = [h for h in header if h not in columns]
        if unknown:
            raise ApplicationError(
                f"unknown column '{unknown[0]}' in the reference dataset",
                extra={"field": unknown[0]},
            )
        order = [header.index(c) for c in columns]
    else:
        if names and len(header) != len(names):
            raise ApplicationError(
                f"the model takes {len(names)} features; the reference dataset has "
                f"{len(header)} columns"
            )
        order = list(range(len(header)))
    rows = []
    for number, record in enumerate(reader, start=2):
        if not record:
            continue
        if len(record) != len(header):
            raise ApplicationError(f"line {number}: {len(record)} values, expected {len(header)}")
        row = []
        for position, index in enumerate(order):
            raw = record[index].strip()
            name = names[position] if position < len(names) else str(position)
            kind = types.get(name) if columns else None
            if raw == "":
                row.append(None)
            elif kind == "string" or (kind is None and schema.get("text_input")):
                row.append(raw)
            else:
                try:
                    row.append(float(raw))
                except ValueError as exc:
                    raise ApplicationError(
                        f"line {number}, column '{name}': expected a number, got '{raw[:40]}'",
                        extra={"field": name},
                    ) from exc
        rows.append(row)
    if not rows:
        raise ApplicationError("the reference dataset has no rows")
    return rows


def _profile(rows: list[list[Any]], schema: dict[str, Any]) -> dict[str, Any]:
    names = capture.feature_names(schema) or [f"/{i}" for i in range(len(rows[0]))]
    types = schema.get("column_types") or {}
    features = {}
    for j, name in enumerate(names):
        values = [row[j] if j < len(row) else None for row in rows]
        declared = {"number": "number", "string": "category"}.get(types.get(name, ""))
        features[name] = stats.profile(values, stats.kind_of(values, declared))
    sample = rows[:REFERENCE_ROWS]
    return {"features": features, "sample": sample}


def drift_reference_upload(
    *, version: ModelVersion, chunks: Iterable[bytes], filename: str, actor: Actor
) -> DriftReference:
    """Store a reference dataset (CSV or Parquet) for `version`, checked against its
    schema."""
    if not version.schema:
        raise ApplicationError("this version has no schema yet (validation has not finished)")
    limit = settings.PORTAL_DRIFT_REFERENCE_MAX_MB * 1024 * 1024
    data = bytearray()
    for chunk in chunks:  # parsed from memory: the store may keep its files encrypted
        data += chunk
        if len(data) > limit:
            raise UploadTooLarge(
                f"the reference dataset is larger than {settings.PORTAL_DRIFT_REFERENCE_MAX_MB} MB "
                "(PORTAL_DRIFT_REFERENCE_MAX_MB)"
            )
    rows = _read_reference(bytes(data), filename, version.schema)
    stored = artifact_store([bytes(data)], max_bytes=limit)
    profile = _profile(rows, version.schema)
    with transaction.atomic():
        reference, _ = DriftReference.objects.update_or_create(
            version=version,
            defaults={"source": DriftReference.Source.DATASET, "sha256": stored.sha256,
                      "filename": filename[:255], "size": stored.size, "rows": len(rows),
                      "profile": profile, "predictions": None, "created_by_id": actor.id},
        )  # fmt: skip
        audit_record(
            actor=actor,
            action="version.drift_reference_uploaded",
            target=version,
            details={"sha256": stored.sha256, "rows": len(rows), "size": stored.size,
                     "filename": filename[:255]},
        )  # fmt: skip
    return reference


def drift_reference_get(*, version: ModelVersion) -> DriftReference | None:
    """The version's reference: an uploaded dataset, else one made from its input example."""
    found = DriftReference.objects.filter(version=version).first()
    if found is not None:
        return found
    example = version.input_example
    if not version.schema or not isinstance(example, list) or not example:
        return None
    rows = [r for r in example if isinstance(r, list)]
    if not rows:
        return None
    reference, _ = DriftReference.objects.get_or_create(
        version=version,
        defaults={"source": DriftReference.Source.INPUT_EXAMPLE, "rows": len(rows),
                  "profile": _profile(rows, version.schema)},
    )  # fmt: skip
    return reference


# --------------------------------------------------------------------------- drift runs


def _reference_predictions(deployment: Deployment, reference: DriftReference) -> dict | None:
    """The model's output profile on the reference sample, asked of a replica once."""
    if reference.predictions is not None:
        return reference.predictions
    from deployments_app.predict import proxy

    target = proxy.get_target(deployment.name, fresh=True)
    backend = target.backend(reference.version.number) if target else None
    if backend is None or not backend.endpoints:
        return None
    body = json.dumps({"instances": reference.profile["sample"], "params": {"proba": False}})
    try:
        answer = proxy.forward(target, backend, body.encode()).body
    except proxy.UpstreamError as exc:
        log.warning("drift: reference predictions of %s failed: %s", deployment.name, exc)
        return None
    predictions = answer.get("predictions") or []
    kind = "number" if reference.version.task == "regression" else "category"
    reference.predictions = stats.profile(predictions, stats.kind_of(predictions, kind))
    DriftReference.objects.filter(pk=reference.pk).update(predictions=reference.predictions)
    return reference.predictions


def drift_compute(*, deployment: Deployment, now: datetime | None = None) -> list[DriftSnapshot]:
    """Score the deployment's stable version over the last PORTAL_DRIFT_WINDOW_MINUTES of
    captured calls: one snapshot per feature and one for the predictions. Nothing when too
    few rows were captured or the version has no reference."""
    now = now or timezone.now()
    version = deployment.version
    reference = drift_reference_get(version=version)
    if reference is None:
        return []
    start = now - timedelta(minutes=settings.PORTAL_DRIFT_WINDOW_MINUTES)
    payloads = (
        captured_records(deployment=deployment, since=start, until=now)
        .filter(version_number=version.number, status_code=200)
        .order_by("-created_at")
        .values_list("payload", flat=True)[: settings.PORTAL_DRIFT_MAX_CALLS]
    )
    columns: dict[str, list[Any]] = {name: [] for name in reference.profile["features"]}
    predictions: list[Any] = []
    rows = 0
    for record in payloads:
        inputs = record.get("inputs")
        if not inputs:
            continue
        names = record.get("columns") or list(columns)
        for row in inputs:
            for name, value in zip(names, row, strict=False):
                if name in columns:
                    columns[name].append(value)
        rows += len(inputs)
        predictions.extend((record.get("outputs") or {}).get("predictions") or [])
    if rows < settings.PORTAL_DRIFT_MIN_ROWS:
        return []
    policy = CapturePolicy.objects.filter(deployment=deployment).values_list("fields", flat=True)
    hidden = {
        name
        for name, rule in (policy.first() or {}).items()
        if rule.get("action") in ("drop", "mask", "hash")
    }
    snapshots = []
    for name, values in columns.items():
        ref = reference.profile["features"][name]
        if not values or name in hidden:  # the policy keeps no comparable values
            continue
        result = stats.compare(ref, values)
        snapshots.append(_snapshot(deployment, version.number, start, now, name, ref, result))
    predicted = _reference_predictions(deployment, reference) if predictions else None
    if predicted is not None:
        result = stats.compare(predicted, predictions)
        snapshot = _snapshot(
            deployment, version.number, start, now, DriftSnapshot.PREDICTION, predicted, result
        )
        snapshot.kind = DriftSnapshot.Kind.PREDICTION
        snapshots.append(snapshot)
    DriftSnapshot.objects.bulk_create(snapshots)
    return snapshots


def _snapshot(deployment, number, start, end, name, ref, result) -> DriftSnapshot:
    return DriftSnapshot(
        deployment=deployment,
        version_number=number,
        window_start=start,
        window_end=end,
        feature=name[:200],
        kind=ref["kind"],
        **result,
    )


def drift_compute_all(*, now: datetime | None = None) -> int:
    """One drift run for every running deployment that captures calls; the snapshot count."""
    total = 0
    running = Deployment.objects.filter(
        capture_percent__gt=0, state__in=[Deployment.State.RUNNING, Deployment.State.DEGRADED]
    ).select_related("version", "model")
    for deployment in running:
        try:
            total += len(drift_compute(deployment=deployment, now=now))
        except Exception:  # one deployment's bad data must not stop the others
            log.exception("drift run failed for %s", deployment.name)
    return total
