"""Every hostile upload, validated by a real Celery worker process (not eagerly in the test).

For each case: rejected with a reason, the payload never ran (its marker file never appears),
nothing was written outside the portal's storage (the worker's cwd, TMPDIR, HOME and data dir,
all folders of this test, are compared before and after), and the worker is still alive; at
the end the same worker still validates a real model.
"""

from __future__ import annotations

import io
import os
import signal
import uuid
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


@pytest.fixture
def own_worker(transactional_db, worker_factory, settings, tmp_path):
    """A worker of this test alone, whose working directory, TMPDIR, HOME, data dir and
    artifact store are folders the test owns: whatever appears there came from the worker
    (or the payloads it judged), never from another program on this machine."""
    from portal.celery import app
    from tests.conftest import WorkerHandle

    root = tmp_path / "worker"
    dirs = {name: root / name for name in ("cwd", "tmp", "home", "data", "artifacts")}
    for folder in dirs.values():
        folder.mkdir(parents=True)
    settings.PORTAL_ARTIFACT_DIR = dirs["artifacts"]
    queue = f"portal-hostile-{uuid.uuid4().hex[:8]}"
    env = {
        **worker_factory.env,
        "PYTHONPATH": str(REPO),  # its cwd is not the repository
        "TMPDIR": str(dirs["tmp"]),
        "HOME": str(dirs["home"]),
        "PORTAL_DATA_DIR": str(dirs["data"]),
        "PORTAL_ARTIFACT_DIR": str(dirs["artifacts"]),
    }
    worker = WorkerHandle(queue, dirs["artifacts"], env, cwd=dirs["cwd"]).start()
    old_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    worker.dirs = dirs
    try:
        yield worker
    finally:
        app.conf.task_default_queue = old_queue
        worker.kill(signal.SIGTERM)
        if settings.CELERY_BROKER_URL.startswith("redis://"):
            import redis

            redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(queue)


def test_every_hostile_upload_is_rejected_by_a_live_worker_that_survives_it(
    own_worker, api_client, tmp_path
):
    worker = own_worker
    client = api_client("deployer")
    markers = tmp_path / "markers"
    markers.mkdir()
    dirs = worker.dirs
    watched = [dirs["cwd"], dirs["tmp"], dirs["home"], dirs["data"], markers]
    # A real model first: what a first validation legitimately leaves (caches, keys) is in
    # the baseline; the store itself receives every upload.
    upload_and_wait_ready(client, "before-hostile", FIXTURE_DIR / "house_price_linreg.pkl")
    ignored = (str(dirs["artifacts"]),)

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
        added = {p for p in _listing(watched) - before if not p.startswith(ignored)}
        assert not added, f"{case}: written outside storage: {sorted(added)[:5]}"
        assert worker.proc.poll() is None, f"{case}: the worker died"

    # Still alive and still useful: the same worker validates a real model.
    upload_and_wait_ready(client, "after-hostile", FIXTURE_DIR / "house_price_linreg.pkl")
