"""Shared fixtures: users per role, API clients, fixture model files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from tests.factories import UserFactory

FIXTURE_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "models"
if not FIXTURE_DIR.exists():  # CI lays shared/ beside the clone; a session has it at /work/shared
    FIXTURE_DIR = Path("/work/shared/fixtures/models")
ROLES = ("viewer", "deployer", "approver", "admin")


def _run_names() -> None:
    """Names of this run alone, so a developer's `make run` (instance `portal`) and this
    suite, or two suites, share a Docker engine and a PostgreSQL server without removing each
    other's replicas or dropping each other's test database. Workers the suite starts inherit
    the instance through the environment."""
    from django.conf import settings as dj_settings

    instance = os.environ.get("PORTAL_INSTANCE") or f"t{uuid.uuid4().hex[:8]}"
    os.environ["PORTAL_INSTANCE"] = dj_settings.PORTAL_INSTANCE = instance
    db = dj_settings.DATABASES["default"]  # the dict the connection reads its test name from
    if db["ENGINE"].endswith("sqlite3"):
        db.setdefault("TEST", {})["NAME"] = str(
            dj_settings.PORTAL_DATA_DIR / f"test-{instance}.sqlite3"
        )
    elif not os.environ.get("PORTAL_TEST_DATABASE"):
        db.setdefault("TEST", {})["NAME"] = f"test_portal_{instance.replace('-', '_')}"


_run_names()


@pytest.fixture(scope="session", autouse=True)
def _plain_static_storage():
    """Pages render {% static %} without a collectstatic manifest (debug is off by default);
    the manifest storage itself is tested by tests/portal/test_production.py."""
    from django.test import override_settings

    with override_settings(
        STORAGES={
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }
    ):
        yield


@pytest.fixture(autouse=True)
def _fresh_proxy_cache():
    """The proxy caches deployments per process for a second; tests recreate rows often."""
    from deployments_app.predict import keys, proxy

    proxy._targets.clear()
    keys._local.clear()
    keys._last_used.clear()
    keys.forget_leases()


@pytest.fixture(autouse=True)
def _isolated_storage(settings, tmp_path):
    """Every test gets its own artifact store and upload dir; env and wheel caches are shared."""
    settings.PORTAL_ARTIFACT_DIR = tmp_path / "artifacts"
    # Password hashing is not what these tests measure; PBKDF2 would dominate their time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.PORTAL_UPLOAD_TMP_DIR = tmp_path / "uploads"
    # Checkpoints describe one database's chain: each test's database has its own.
    settings.PORTAL_AUDIT_CHECKPOINT_FILE = tmp_path / "audit-checkpoints.jsonl"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    (tmp_path / "uploads").mkdir()
    (tmp_path / "artifacts").mkdir()


@pytest.fixture(autouse=True)
def _approval_not_required(settings):
    """PORTAL_REQUIRE_APPROVAL is on by default; tests about deploying (not about approval)
    deploy pending versions. Tests of the gate turn it back on (tests/models_app/
    test_governance.py); a rejected version never deploys either way."""
    settings.PORTAL_REQUIRE_APPROVAL = False


@pytest.fixture
def make_user(db):
    def _make(role: str | None = None, **kwargs):
        user = UserFactory(**kwargs)
        if role:
            user.groups.add(Group.objects.get_or_create(name=role)[0])
        return user

    return _make


@pytest.fixture
def role_client(make_user):
    """`role_client("deployer")` -> a logged-in Django test client and its user."""
    from django.test import Client

    def _client(role: str | None):
        client = Client()
        user = make_user(role) if role else None
        if user:
            client.force_login(user)
        client.user = user
        return client

    return _client


@pytest.fixture
def api_client(make_user):
    def _client(role: str | None):
        client = APIClient()
        user = make_user(role) if role else None
        if user:
            client.force_authenticate(user)
        client.user = user
        return client

    return _client


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium under Playwright, one for the whole run (tests/browser/conftest.py
    has the page fixtures): a second Playwright started in the same process fails inside
    the first one's event loop."""
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
    from tests.services import require

    require(Path(CHROMIUM).exists() or bool(shutil.which("chromium")), "Debian's chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the lock file pins it
        require(False, "the playwright Python package")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def manifest() -> dict[str, dict]:
    entries = json.loads((FIXTURE_DIR / "manifest.json").read_text())
    return {e["file"]: e for e in entries}


@pytest.fixture
def fixture_copy(tmp_path):
    """Copy a read-only fixture model into the test's folder."""

    def _copy(name: str) -> Path:
        target = tmp_path / "fixtures" / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(FIXTURE_DIR / name, target)
        target.chmod(0o644)
        return target

    return _copy


@pytest.fixture(scope="session", autouse=True)
def _docker_build_cache_cleanup():
    """Dependency-stage images are shared by the tests of a run, then removed with it."""
    try:
        import docker

        client = docker.from_env(timeout=120)  # removal is slow on a busy engine
        before = {i.id for i in client.images.list(filters={"label": "portal.stage=deps"})}
    except Exception:  # noqa: BLE001 - no docker: nothing to clean
        yield
        return
    yield
    # An image in use or removed by a concurrent run on this machine is that run's business.
    with contextlib.suppress(docker.errors.APIError):
        for image in client.images.list(filters={"label": "portal.stage=deps"}):
            if image.id not in before:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(image.id, force=True)


# --------------------------------------------------------------------------- real worker


def _database_url(settings_dict: dict) -> str:
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    return (
        f"postgres://{settings_dict['USER']}:{settings_dict['PASSWORD']}@"
        f"{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}/"
        f"{settings_dict['NAME']}"
    )


class WorkerHandle:
    """A real `celery worker` process, started and stopped by tests."""

    def __init__(
        self,
        queue: str,
        storage: Path,
        env: dict[str, str],
        args: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> None:
        self.queue, self.storage, self.env, self.args = queue, storage, env, args
        self.cwd = cwd or Path(__file__).resolve().parent.parent
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerHandle:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--queues",
                self.queue,
                "--hostname",
                f"{self.queue}-{uuid.uuid4().hex[:4]}@%h",
                "--without-mingle",
                "--without-gossip",
                *self.args,
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.cwd,
        )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the worker and its pool children at once, as a crash would."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def worker_factory(django_db_setup, django_db_blocker, tmp_path_factory):
    """Start real Celery workers on the real broker, using the test database.

    Tests that use one need `transactional_db` (the worker must see committed rows) and
    `worker_storage` (the worker and the test share one artifact store). A private queue
    keeps a developer's own worker, if any, away from the test's tasks.
    """
    from django.conf import settings as dj_settings
    from django.db import connection

    from portal.celery import app

    queue = f"portal-test-{uuid.uuid4().hex[:8]}"
    storage = tmp_path_factory.mktemp("worker-storage")
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": _database_url(connection.settings_dict),
            "PORTAL_ARTIFACT_DIR": str(storage / "artifacts"),
            "PORTAL_DATA_DIR": str(storage / "data"),
            "PORTAL_ENV_CACHE": str(dj_settings.PORTAL_ENV_CACHE),
            "PORTAL_WHEELHOUSE": str(dj_settings.PORTAL_WHEELHOUSE),
            "CELERY_BROKER_URL": dj_settings.CELERY_BROKER_URL,
            # Its own data dir would give it a key of its own (local mode makes one there):
            # replica tokens it signs must be the ones this process's proxy sends.
            "DJANGO_SECRET_KEY": dj_settings.SECRET_KEY,
            # Likewise the artifact master key: it must open what this process stored.
            "PORTAL_ARTIFACT_KEY_FILE": str(_artifact_key_file(dj_settings)),
            # Alert webhooks: the tests' receivers listen on loopback, and retries come
            # after 2 s, 4 s, ... instead of 10 s, 20 s, ...
            "PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE": "1",
            "PORTAL_ALERT_WEBHOOK_BACKOFF_SECONDS": "2",
        }
    )
    if dj_settings.CELERY_BROKER_URL.startswith("filesystem://"):
        env["PORTAL_DATA_DIR"] = str(dj_settings.PORTAL_DATA_DIR)  # share the broker folder
    old_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    started: list[WorkerHandle] = []

    def make() -> WorkerHandle:
        handle = WorkerHandle(queue, storage, env).start()
        started.append(handle)
        return handle

    make.storage = storage  # type: ignore[attr-defined]
    make.env = env  # type: ignore[attr-defined]
    make.data_dir = Path(env["PORTAL_DATA_DIR"])  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        app.conf.task_default_queue = old_queue
        for handle in started:
            handle.kill(signal.SIGTERM)
        if dj_settings.CELERY_BROKER_URL.startswith("redis://"):
            import redis

            r = redis.Redis.from_url(dj_settings.CELERY_BROKER_URL)
            r.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
            # kombu's exchange bindings name the queue: drop ours, keep everyone else's.
            for binding in r.scan_iter("_kombu.binding.*"):
                for member in r.smembers(binding):
                    if queue.encode() in member:
                        r.srem(binding, member)


def _artifact_key_file(dj_settings) -> Path:
    """The test process's master key file (made now if local mode has not made it yet)."""
    from models_app.keyprovider import get_provider

    get_provider()
    return Path(dj_settings.PORTAL_ARTIFACT_KEY_FILE)


@pytest.fixture(scope="session")
def celery_worker_process(worker_factory):
    """One long-lived worker shared by the tests that need one."""
    return worker_factory()


@pytest.fixture
def worker_storage(settings, celery_worker_process):
    """Point this test's artifact store at the one the worker uses."""
    settings.PORTAL_ARTIFACT_DIR = celery_worker_process.storage / "artifacts"
    # Runtime state (process replicas) must be shared with the worker as well.
    settings.PORTAL_DATA_DIR = Path(celery_worker_process.env["PORTAL_DATA_DIR"])
    settings.PORTAL_ARTIFACT_DIR.mkdir(exist_ok=True)
    return settings.PORTAL_ARTIFACT_DIR


def wait_for(predicate, *, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll until predicate() is truthy; fail with `what` after timeout seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def upload_and_wait_ready(client, model_name: str, path: Path, example=None, timeout=600):
    """Upload through the API and wait for the real worker to validate it; returns the JSON."""
    from models_app.models import ModelVersion

    with open(path, "rb") as fh:
        data = {"file": fh}
        if example is not None:
            data["input_example"] = json.dumps(example)
        response = client.post(f"/api/v1/models/{model_name}/versions", data, format="multipart")
    assert response.status_code in (200, 201), response.content
    number = response.json()["number"]

    def done():
        v = ModelVersion.objects.filter(model__name=model_name, number=number).first()
        return v if v and v.status in ("ready", "invalid") else None

    version = wait_for(done, timeout=timeout, what=f"{model_name} v{number} validation")
    assert version.status == "ready", version.rejection_reason
    return version


class AsgiLaneClient:
    """A test client for POSTs through the asynchronous lane of portal.asgi (the app that
    runportal serves): API-key prediction calls are answered on an event loop that runs in a
    thread of its own (the test's thread may already have a running loop: Playwright's sync
    API leaves one set while its browser is open); whatever the lane hands on is answered by
    Django's test client.

    The lane reads the database from worker threads and writes its log rows on its own
    connection, as in production, so tests that use it need committed rows (a transactional
    test) and the `asgi_lane_connections` fixture.
    """

    def __init__(self, **defaults):
        import asyncio
        import threading

        from django.test import Client

        self.django = Client(**defaults)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def __getattr__(self, name):
        return getattr(self.django, name)

    def _run(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def close(self):
        from deployments_app.predict import aio

        try:
            self._run(aio.close_loop_state())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()

    def post(self, path, data=None, content_type="application/octet-stream", **extra):
        from django.http import HttpResponse

        from deployments_app.predict.aio import wrap

        if isinstance(data, str):
            data = data.encode()
        data = data or b""
        headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(data))]
        host = extra.pop("HTTP_HOST", "testserver")
        address = extra.pop("REMOTE_ADDR", "127.0.0.1")
        headers.append((b"host", host.encode()))
        for key, value in extra.items():
            if key.startswith("HTTP_"):
                headers.append((key[5:].lower().replace("_", "-").encode(), str(value).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": (address, 50000),
            "server": ("testserver", 80),
        }
        handed_over, sent = [], []

        async def to_django(scope, receive, send):
            handed_over.append(True)

        async def receive():
            return {"type": "http.request", "body": data, "more_body": False}

        async def send(message):
            sent.append(message)

        self._run(wrap(to_django)(scope, receive, send))
        if handed_over:
            extra["HTTP_HOST"], extra["REMOTE_ADDR"] = host, address
            return self.django.post(path, data, content_type=content_type, **extra)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        response = HttpResponse(body, status=start["status"])
        for key, value in start["headers"]:
            response[key.decode("latin-1")] = value.decode("latin-1")
        response.json = lambda: json.loads(body)
        response.lane = "asgi"
        return response


@pytest.fixture
def asgi_lane_connections(monkeypatch):
    """For AsgiLaneClient: the lane's worker threads close their database connection after
    every hop (a test database cannot be dropped while they hold one open)."""
    from deployments_app.predict import aio

    real = aio._tidy_connections
    monkeypatch.setattr(aio, "_tidy_connections", lambda failed: real(True))
