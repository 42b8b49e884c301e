"""Optional ONNX export at validation, in the sandbox, with a parity gate.

The model is converted by ``onnx_convert.py`` running in the sandbox (same isolation and
limits as the inspection) with the Python of an environment holding the model's exact pins
plus :data:`ONNX_PINS`. The converted graph is run with onnxruntime on the input example and
a seeded reference sample drawn around it; it is kept only when the labels are identical
and the largest scaled difference ``|onnx - sklearn| / max(1, |sklearn|)`` (probabilities
for a classifier, predictions for a regressor) is within the tolerance. ONNX computes in
float32 (inputs are cast to float32, about 7 significant digits; tree thresholds are float32
as in scikit-learn's own trees), so a tolerance much below 1e-6 fails most models.

The result is a dict for the version's report (key ``onnx``); the .onnx file goes to the
artifact store. A model that does not convert is never rejected for it: the report says why.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from models_app.validation import envs, sandbox

CONVERT_SCRIPT = Path(__file__).with_name("onnx_convert.py")
ONNX_FILE = "model.onnx"

# Checked on PyPI (cp311 manylinux wheels) beside each pinned scikit-learn set of envs.py:
# 1.3.2 + numpy 1.26, 1.5.2 + numpy 1.26, 1.9.1 + numpy 2.4 (and skops 0.16) all install and
# convert the shared fixtures with these.
ONNX_PINS = {"skl2onnx": "1.20.0", "onnx": "1.19.1", "onnxruntime": "1.23.2"}
# Tried in turn: the common opsets first, then the newest ML opset onnxruntime 1.23 runs
# (some converters need ai.onnx.ml >= 4/5, e.g. tree ensembles with double thresholds).
OPSETS = ({"": 17, "ai.onnx.ml": 3}, {"": 21, "ai.onnx.ml": 5})
# What an ONNX bundle installs beside the server: onnxruntime and what it imports.
RUNTIME_PACKAGES = ("onnxruntime", "numpy", "coloredlogs", "flatbuffers", "humanfriendly",
                    "mpmath", "packaging", "protobuf", "sympy")  # fmt: skip


def not_converted(reason: str, **extra: Any) -> dict[str, Any]:
    return {"status": "not converted", "reason": reason, **extra}


def export_onnx(
    *,
    path: Path,
    fmt: str,
    requirements: dict[str, str],
    schema: dict[str, Any],
    example: list | None,
    columns: list | None,
    log=None,
) -> tuple[dict[str, Any], bytes | None]:
    """(the report's ``onnx`` entry, the .onnx bytes when converted) for a validated model."""
    started = time.perf_counter()
    tolerance = float(settings.PORTAL_ONNX_TOLERANCE)
    base = {"tolerance": tolerance, "pins": dict(ONNX_PINS)}
    if not example:
        return not_converted("no input example to check the converted model on", **base), None
    reqs = {**requirements, **ONNX_PINS}
    try:
        env = envs.ensure_env(
            reqs, root=settings.PORTAL_ENV_CACHE, wheelhouse=settings.PORTAL_WHEELHOUSE, log=log
        )
        allowlist = envs.ensure_allowlist(env)
    except Exception as exc:  # noqa: BLE001 - e.g. no wheel of these pins for this version
        reason = f"skl2onnx {ONNX_PINS['skl2onnx']} does not install beside these pins: {exc}"
        return not_converted(reason[:2000], **base), None
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        dest = Path(tmp) / ONNX_FILE
        result = sandbox.run_inspection(
            path,
            fmt=fmt,
            env=env,
            example=example,
            columns=columns,
            allowlist=allowlist,
            timeout=settings.PORTAL_SANDBOX_TIMEOUT,
            memory_mb=settings.PORTAL_SANDBOX_MEMORY_MB,
            file_size_mb=max(10, settings.PORTAL_MAX_UPLOAD_MB * 4),
            script_path=CONVERT_SCRIPT,
            extra_options={
                "schema": schema,
                "tolerance": tolerance,
                "sample_rows": settings.PORTAL_ONNX_SAMPLE_ROWS,
                "opsets": list(OPSETS),
            },
            output=(ONNX_FILE, dest),
        )
        data = dest.read_bytes() if dest.is_file() else None
    box = result.pop("sandbox", None) or {}
    if "status" not in result:  # the sandbox's own failure report (timeout, crash, limits)
        tail = (box.get("stderr") or "").strip().splitlines()[-1:]
        result = not_converted(
            f"the conversion did not finish: {result.get('error')}"
            + (f" ({tail[0][:300]})" if tail else "")
        )
    result.pop("ok", None)
    report = {**base, **result, "seconds": round(time.perf_counter() - started, 2)}
    report["sandbox_ms"] = box.get("elapsed_ms")
    frozen = env.frozen
    report["runtime_requirements"] = {n: frozen[n] for n in RUNTIME_PACKAGES if n in frozen}
    if report.get("status") != "converted" or not data:
        if report.get("status") == "converted":
            report.update(status="not converted", reason="the converter wrote no file")
        return report, None
    report["sha256"] = hashlib.sha256(data).hexdigest()
    report["size"] = len(data)
    return report, data
