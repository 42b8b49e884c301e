"""Benchmark validation: time from upload to `ready` for every fixture model.

For each fixture in /work/shared/fixtures/models (copied first; the originals are read-only)
it uploads the file with `models_app.services.model_version_upload` and measures until the
version is `ready`, in two conditions:

* cold: an empty environment cache (a fresh temporary `PORTAL_ENV_CACHE` per fixture), so
  the virtual environment for the model's scikit-learn pins is built; wheels still come
  from the shared wheelhouse (`PORTAL_WHEELHOUSE`), so no download is timed unless a wheel
  is missing from it;
* warm: the same bytes uploaded to a second model name, the environment now cached.

Validation runs inline, in this process: Celery runs eagerly (`PORTAL_TASKS_EAGER=1`), so
the upload's on-commit enqueue calls the real task, which calls
`models_app.services.model_version_validate` before the upload returns. The database is a
temporary SQLite file, migrated at start; artifacts, environments and the database live in
one temporary folder that is removed at the end, so no real data is touched.

The table shows, per fixture: scikit-learn version, cold and warm upload-to-ready seconds,
and from the warm run's report the static scan step (ms), the sandboxed load step (ms) and
the sandbox child's own elapsed time (ms).

    .venv/bin/python bench/validation_bench.py [--only spam_pipeline.joblib] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path("/work/shared/fixtures/models")
CHUNK = 1024 * 1024


def _setup_django(tmp: Path) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["PORTAL_DATA_DIR"] = str(tmp / "data")
    os.environ["PORTAL_ARTIFACT_DIR"] = str(tmp / "artifacts")
    os.environ["PORTAL_UPLOAD_TMP_DIR"] = str(tmp / "uploads")
    os.environ["PORTAL_ENV_CACHE"] = str(tmp / "envs-unused")
    os.environ.setdefault("PORTAL_WHEELHOUSE", "/var/cache/model-portal/wheels")
    os.environ["PORTAL_TASKS_EAGER"] = "1"
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ.pop("REDIS_URL", None)  # the cache and broker stay in this process
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _step_ms(report: dict, key: str) -> float | None:
    for step in report.get("steps", []):
        if step.get("key") == key:
            return step.get("ms")
    return None


def _upload_until_ready(model_name: str, path: Path, entry: dict) -> tuple[float, object]:
    from models_app.models import ModelVersion
    from models_app.services import model_version_upload, model_version_validate
    from portal.audit import Actor

    def chunks():
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK):
                yield block

    started = time.perf_counter()
    version, _created = model_version_upload(
        model_name=model_name,
        chunks=chunks(),
        actor=Actor.system("bench"),
        filename=path.name,
        example_text=json.dumps(entry["input_example"]),
    )
    # Eager Celery validated it on commit; this is a no-op then, and the fallback otherwise.
    model_version_validate(version_id=version.pk)
    elapsed = time.perf_counter() - started
    version = ModelVersion.objects.get(pk=version.pk)
    if version.status != ModelVersion.Status.READY:
        raise SystemExit(f"{path.name} ended {version.status}: {version.rejection_reason}")
    return elapsed, version


def run(only: list[str] | None) -> list[dict]:
    from django.conf import settings

    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    rows = []
    for n, entry in enumerate(manifest):
        if only and entry["file"] not in only:
            continue
        work = Path(tempfile.mkdtemp(prefix="fixture-", dir=settings.PORTAL_DATA_DIR))
        try:
            copy = work / entry["file"]
            shutil.copyfile(FIXTURES / entry["file"], copy)
            copy.chmod(0o644)
            settings.PORTAL_ENV_CACHE = work / "envs"  # empty: the cold run builds it
            cold_s, _cold = _upload_until_ready(f"bench-{n}-cold", copy, entry)
            warm_s, warm = _upload_until_ready(f"bench-{n}-warm", copy, entry)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report = warm.report or {}
        rows.append(
            {
                "fixture": entry["file"],
                "sklearn": warm.sklearn_version,
                "cold_s": round(cold_s, 2),
                "warm_s": round(warm_s, 2),
                "scan_ms": _step_ms(report, "scan"),
                "env_ms": _step_ms(report, "environment"),
                "sandbox_ms": _step_ms(report, "load"),
                "sandbox_child_ms": (report.get("sandbox") or {}).get("elapsed_ms"),
                "isolation": (report.get("sandbox") or {}).get("isolation"),
            }
        )
    return rows


def _table(rows: list[dict]) -> str:
    header = (
        f"{'fixture':<28} {'sklearn':>7} {'cold s':>7} {'warm s':>7} "
        f"{'scan ms':>8} {'sandbox ms':>10} {'(child ms)':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['fixture']:<28} {r['sklearn']:>7} {r['cold_s']:>7.2f} {r['warm_s']:>7.2f} "
            f"{r['scan_ms'] or 0:>8.1f} {r['sandbox_ms'] or 0:>10.1f} "
            f"{r['sandbox_child_ms'] or 0:>10.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="fixture file name (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="portal-validation-bench-"))
    try:
        _setup_django(tmp)
        rows = run(args.only)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(rows, indent=2) if args.json else _table(rows))


if __name__ == "__main__":
    main()
