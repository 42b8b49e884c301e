"""Every hostile upload, validated by a real Celery worker process (not eagerly in the test).

For each case: rejected with a reason, the payload never ran (its marker file never appears),
nothing was written outside the portal's storage (the worker's cwd, /tmp, HOME and the
portal's data dir are compared before and after), and the worker is still alive; at the end
the same worker still validates a real model.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from models_app.models import ModelVersion
from tests.conftest import FIXTURE_DIR, upload_and_wait_ready, wait_for
from tests.models_app.test_registry_rules import HOSTILE

pytestmark = [pytest.mark.security, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _listing(roots: list[Path], depth: int = 2) -> set[str]:
    """Paths under each root, `depth` levels deep (enough to see a dropped file or folder)."""
    seen: set[str] = set()
    for root in roots:
        if not root.exists():
            continue
        frontier = [(root, 0)]
        while frontier:
            folder, level = frontier.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                seen.add(entry.path)
                if level + 1 < depth and entry.is_dir(follow_symlinks=False):
                    frontier.append((Path(entry.path), level + 1))
    return seen


def test_every_hostile_upload_is_rejected_by_a_live_worker_that_survives_it(
    transactional_db, worker_storage, celery_worker_process, api_client, tmp_path
):
    worker = celery_worker_process
    client = api_client("deployer")
    data_dir = Path(worker.env["PORTAL_DATA_DIR"])
    artifact_dir = Path(worker.env["PORTAL_ARTIFACT_DIR"])
    markers = tmp_path / "markers"
    markers.mkdir()
    watched = [REPO, Path("/tmp"), Path(os.path.expanduser("~")), data_dir, markers]
    # This test's own folders, the store itself, and a shell harness's job folders if any.
    ignored = (str(tmp_path), str(artifact_dir), str(REPO / "test-artifacts"), "/tmp/bash_jobs")

    for case in sorted(HOSTILE):
        before = _listing(watched)
        marker = markers / f"pwned-{case}"
        name = f"hostile-{case}"
        response = client.post(
            f"/api/v1/models/{name}/versions",
            {"file": io.BytesIO(HOSTILE[case](marker))},
            format="multipart",
        )
        assert response.status_code == 201, (case, response.content)
        version = wait_for(
            lambda n=name: ModelVersion.objects.filter(
                model__name=n, status__in=("ready", "invalid")
            ).first(),
            timeout=120,
            what=f"the worker to judge {case}",
        )
        assert version.status == "invalid", case
        assert version.rejection_reason, case
        assert not marker.exists(), f"{case}: the payload ran"
        added = {
            p for p in _listing(watched) - before if not p.startswith(ignored) and "pytest" not in p
        }
        assert not added, f"{case}: written outside storage: {sorted(added)[:5]}"
        assert worker.proc.poll() is None, f"{case}: the worker died"

    # Still alive and still useful: the same worker validates a real model.
    upload_and_wait_ready(client, "after-hostile", FIXTURE_DIR / "house_price_linreg.pkl")
