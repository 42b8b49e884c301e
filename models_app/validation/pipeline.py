"""The validation pipeline: detect, scan, pick the environment, load in the sandbox, test.

Each step is recorded (title, pass/fail, a sentence for people, timings) in the report that
the version page shows. Nothing here runs model code in this process: the scanner reads
opcodes, and only the sandbox child process loads the file.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from models_app.validation import envs, policy, sandbox
from models_app.validation.scan import scan_file


@dataclass
class ValidationOutcome:
    ok: bool
    reason: str = ""
    format: str = ""
    sklearn_version: str = ""
    requirements: dict[str, str] = field(default_factory=dict)
    estimator_class: str = ""
    task: str = ""
    schema: dict[str, Any] = field(default_factory=dict)
    example: dict[str, Any] | None = None
    example_output: dict[str, Any] | None = None
    report: dict[str, Any] = field(default_factory=dict)


class _Report:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.data: dict[str, Any] = {"steps": self.steps}
        self.started = time.perf_counter()

    def step(
        self, key: str, title: str, ok: bool, summary: str, started: float, **details: Any
    ) -> None:
        self.steps.append(
            {
                "key": key,
                "title": title,
                "ok": ok,
                "summary": summary,
                "ms": round((time.perf_counter() - started) * 1000, 1),
                **details,
            }
        )

    def finish(self) -> dict[str, Any]:
        self.data["total_ms"] = round((time.perf_counter() - self.started) * 1000, 1)
        return self.data


def _reject(report: _Report, reason: str) -> ValidationOutcome:
    return ValidationOutcome(ok=False, reason=reason, report=report.finish())


def validate_artifact(
    *,
    path: Path,
    declared_sklearn_version: str = "",
    example_rows: list[Any] | None = None,
    example_columns: list[str] | None = None,
    log=None,
) -> ValidationOutcome:
    report = _Report()
    log = log or (lambda _line: None)

    # 1-2. Format and static scan: the gate. Nothing is loaded before it passes.
    t = time.perf_counter()
    try:
        scan = scan_file(path)
    except Exception as exc:  # noqa: BLE001 - a scanner error rejects, it never lets through
        report.step("scan", "Static scan", False, f"the scanner failed: {exc}", t)
        return _reject(report, f"the file could not be scanned: {exc}")
    scan_data = scan.to_dict()
    report.data["scan"] = scan_data
    if not scan.ok:
        if scan.offending:
            names = "; ".join(f"{o.name} ({o.reason})" for o in scan.offending[:10])
            reason = f"the file imports code that a model never needs: {names}"
        else:
            reason = "; ".join(scan.errors[:5]) or "the file is not a model this portal accepts"
        report.step("scan", "Format and static scan", False, reason, t)
        return _reject(report, reason)
    fmt = scan.format
    report.step(
        "scan",
        "Format and static scan",
        True,
        f"{fmt} file{f' ({scan.compression}-compressed)' if scan.compression else ''}; "
        f"{len(scan.globals_found)} imported names, all on the allowlist",
        t,
    )

    # 3. Which scikit-learn wrote it.
    t = time.perf_counter()
    sklearn_version = scan.sklearn_version or declared_sklearn_version
    if not sklearn_version:
        reason = (
            "the file does not record which scikit-learn version wrote it; "
            "state it in the upload form (sklearn_version)"
        )
        report.step("versions", "scikit-learn version", False, reason, t)
        return _reject(report, reason)
    if (
        scan.sklearn_version
        and declared_sklearn_version
        and (scan.sklearn_version != declared_sklearn_version)
    ):
        report.data.setdefault("notes", []).append(
            f"the uploader said scikit-learn {declared_sklearn_version}, the file says "
            f"{scan.sklearn_version}: the file wins"
        )
    try:
        requirements = envs.resolve_requirements(sklearn_version, scan.numpy_major, fmt)
    except (envs.UnsupportedVersionError, ValueError) as exc:
        report.step("versions", "scikit-learn version", False, str(exc), t)
        return _reject(report, str(exc))
    source = "recorded in the file" if scan.sklearn_version else "stated by the uploader"
    report.step(
        "versions",
        "scikit-learn version",
        True,
        f"written by scikit-learn {sklearn_version} ({source}); it will be loaded and "
        f"served with exactly that version",
        t,
        requirements=requirements,
    )

    # 4. The environment for that version (cached after the first model of a version).
    t = time.perf_counter()
    try:
        env = envs.ensure_env(
            requirements,
            root=settings.PORTAL_ENV_CACHE,
            wheelhouse=settings.PORTAL_WHEELHOUSE,
            log=log,
        )
    except Exception as exc:  # noqa: BLE001 - shown to the uploader
        report.step("environment", "Environment", False, f"could not build it: {exc}", t)
        return _reject(report, f"could not prepare scikit-learn {sklearn_version}: {exc}")
    report.step(
        "environment",
        "Environment",
        True,
        f"{'built' if env.built else 'reused'} a virtual environment with "
        f"scikit-learn {env.frozen.get('scikit-learn', sklearn_version)}",
        t,
        frozen=env.frozen,
    )

    # 5. The exact allowlist of that environment: every name the scanner found must be on
    # it, called only if it may be, with no BUILD state shadowing a method. The loaders
    # in the sandbox and in every replica enforce the same list on every opcode.
    t = time.perf_counter()
    try:
        allowlist_path = envs.ensure_allowlist(env)
        allowlist = json.loads(allowlist_path.read_text())
    except Exception as exc:  # noqa: BLE001 - shown to the uploader
        reason = f"could not list what scikit-learn {sklearn_version} models may contain: {exc}"
        report.step("allowlist", "Allowlist", False, reason, t)
        return _reject(report, reason)
    problems = policy.check_scanned(scan.globals_found, scan.called, scan.state_keys, allowlist)
    problems += [
        (name, reason)
        for name in scan.skops_untrusted_types
        if (reason := policy.check_allowed(name, allowlist))
    ]
    if problems:
        names = "; ".join(f"{name} ({why})" for name, why in problems[:10])
        reason = f"the file holds what a scikit-learn {sklearn_version} model never does: {names}"
        report.step("allowlist", "Allowlist", False, reason, t)
        return _reject(report, reason)
    report.step(
        "allowlist",
        "Allowlist",
        True,
        f"every imported name is on the scikit-learn {sklearn_version} allowlist "
        f"({len(allowlist.get('names', {}))} names)",
        t,
    )

    # 6-7. Load (through the restricted loader), introspect and smoke-test in the sandbox,
    # if it isolates enough.
    t = time.perf_counter()
    shortfall = isolation_shortfall()
    if shortfall:
        report.data["sandbox"] = {"isolation": sandbox.isolation()}
        report.step("load", "Sandboxed load", False, shortfall, t)
        return _reject(report, shortfall)
    result = sandbox.run_inspection(
        path,
        fmt=fmt,
        env=env,
        example=example_rows,
        columns=example_columns,
        allowlist=allowlist_path,
        timeout=settings.PORTAL_SANDBOX_TIMEOUT,
        memory_mb=settings.PORTAL_SANDBOX_MEMORY_MB,
    )
    report.data["sandbox"] = result.get("sandbox")
    report.data["inspection"] = {
        k: v for k, v in result.items() if k not in ("sandbox", "importance")
    }
    if result.get("importance"):  # the version page's bar chart (importance.html)
        report.data["importance"] = result["importance"]
    if not result.get("ok"):
        reason = f"loading the model in the sandbox failed: {result.get('error')}"
        report.step("load", "Sandboxed load", False, reason, t)
        return _reject(report, reason)
    estimator = result.get("estimator") or {}
    schema = dict(result.get("schema") or {})
    smoke = result.get("smoke") or {}
    warnings = result.get("warnings") or []
    report.step(
        "load",
        "Sandboxed load",
        True,
        f"loaded a {estimator.get('class', '?')} ({estimator.get('task', 'unknown')}) "
        f"in an isolated process" + (f"; {len(warnings)} warning(s)" if warnings else ""),
        t,
        warnings=warnings,
    )
    t = time.perf_counter()
    predictions = smoke.get("predictions")
    problem = _check_predictions(predictions, len(smoke.get("input") or []))
    if problem:
        report.step("smoke", "Test prediction", False, problem, t)
        return _reject(report, f"the test prediction failed: {problem}")
    report.step(
        "smoke",
        "Test prediction",
        True,
        f"predicted {len(predictions)} row(s) of the "
        f"{'given' if example_rows else 'synthetic'} example",
        t,
    )
    schema.setdefault("classes", estimator.get("classes"))
    schema.setdefault("has_predict_proba", estimator.get("has_predict_proba", False))
    if settings.PORTAL_ONNX_EXPORT:
        report.data["onnx"] = _onnx_step(path, fmt, env.requirements, schema, smoke, log)
    return ValidationOutcome(
        ok=True,
        format=fmt,
        sklearn_version=sklearn_version,
        requirements=env.frozen,
        estimator_class=str(estimator.get("class", ""))[:255],
        task=str(estimator.get("task", ""))[:30],
        schema=schema,
        example={"rows": smoke.get("input"), "columns": schema.get("columns")},
        example_output={"predictions": predictions, "probabilities": smoke.get("probabilities")},
        report=report.finish(),
    )


def _onnx_step(path, fmt, requirements, schema, smoke, log) -> dict[str, Any]:
    """The optional ONNX export (never rejects the version); the file into the store."""
    from models_app.storage import artifact_store
    from models_app.validation.onnx_export import export_onnx

    try:
        onnx, data = export_onnx(
            path=path,
            fmt=fmt,
            requirements=requirements,
            schema=schema,
            example=smoke.get("input"),
            columns=schema.get("columns"),
            log=log,
        )
    except Exception as exc:  # noqa: BLE001 - the export is optional: say why, go on
        return {"status": "not converted", "reason": f"the export failed: {exc}"[:2000]}
    if data is not None:
        stored = artifact_store([data])
        onnx["sha256"], onnx["size"] = stored.sha256, stored.size
    return onnx


# Weakest first, as sandbox.isolation() names them.
ISOLATION_LEVELS = ("none", "userns", "namespaces")


def isolation_shortfall() -> str:
    """Why the sandbox may not run here ("" when it may): this host isolates less than
    PORTAL_SANDBOX_MIN_ISOLATION asks. Failing closed: a weaker sandbox is never used quietly."""
    minimum = settings.PORTAL_SANDBOX_MIN_ISOLATION
    iso = sandbox.isolation()
    if ISOLATION_LEVELS.index(iso["mode"]) >= ISOLATION_LEVELS.index(minimum):
        return ""
    notes = "; ".join(iso.get("notes") or []) or "no reason given"
    return (
        f"the sandbox on this host offers only '{iso['mode']}' isolation ({notes}), and "
        f"PORTAL_SANDBOX_MIN_ISOLATION requires '{minimum}': the model was not loaded"
    )


def _check_predictions(predictions: Any, rows: int) -> str:
    if not isinstance(predictions, list):
        return "the model returned no predictions"
    if len(predictions) != rows:
        return f"{len(predictions)} predictions for {rows} input rows"
    for value in predictions:
        if isinstance(value, float) and not math.isfinite(value):
            return "the model returned a non-finite number (NaN or infinity)"
    return ""
