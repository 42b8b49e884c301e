"""The dashboard: counts, per-deployment figures from the prediction log, charts, health."""

from __future__ import annotations

import uuid
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.conf import settings as dj_settings
from django.urls import reverse
from django.utils import timezone

from deployments_app.models import Deployment, PredictionLog, Replica
from models_app.models import ModelVersion, RegisteredModel
from portal import selectors
from tests.services import require


@pytest.fixture(autouse=True)
def _private_cache(settings):
    """A cache of our own: the worker ping and reconciler stamp must not leak between tests."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"dashboard-{uuid.uuid4().hex}",
        }
    }


@pytest.fixture
def no_workers(monkeypatch):
    monkeypatch.setattr(
        selectors,
        "_ping_workers",
        lambda: {"workers": [], "broker_ok": True, "broker_error": ""},
    )


@pytest.fixture
def one_worker(monkeypatch):
    monkeypatch.setattr(
        selectors,
        "_ping_workers",
        lambda: {"workers": ["w1@host"], "broker_ok": True, "broker_error": ""},
    )


def make_deployment(name: str, *, state: str = "running", replicas: int = 2, healthy: int = 1):
    model, _ = RegisteredModel.objects.get_or_create(name=f"{name}-model")
    version = ModelVersion.objects.create(
        model=model,
        number=model.versions.count() + 1,
        status="ready",
        artifact_sha256=uuid.uuid4().hex,
        artifact_size=10,
        input_example={"rows": [[1.0, 2.0, 3.0]], "columns": None},
    )
    deployment = Deployment.objects.create(
        name=name, model=model, version=version, runtime="process", replicas=replicas, state=state
    )
    for i in range(replicas):
        Replica.objects.create(
            deployment=deployment,
            name=f"portal-{name}-{i}",
            index=i,
            version_number=version.number,
            healthy=i < healthy,
        )
    return deployment


def log_calls(name: str, latencies, *, ago: timedelta = timedelta(minutes=5), errors: int = 0):
    now = timezone.now() - ago
    rows = [
        PredictionLog(
            created_at=now,
            deployment_name=name,
            model_name=f"{name}-model",
            version_number=1,
            caller="alice",
            status_code=500 if i < errors else 200,
            latency_ms=float(latency),
            rows=1,
        )
        for i, latency in enumerate(latencies)
    ]
    PredictionLog.objects.bulk_create(rows)


@pytest.mark.django_db
def test_dashboard_shows_counts_and_per_deployment_figures(role_client, one_worker):
    make_deployment("house", replicas=2, healthy=1)
    make_deployment("iris", state="failed", replicas=1, healthy=0)
    ModelVersion.objects.create(
        model=RegisteredModel.objects.get(name="iris-model"),
        number=2,
        status="invalid",
        artifact_sha256="b" * 64,
        artifact_size=1,
    )
    log_calls("house", range(1, 101), errors=10)
    log_calls("house", [5000.0] * 50, ago=timedelta(hours=3))  # outside the last hour

    response = role_client("viewer").get(reverse("home"))

    assert response.status_code == HTTPStatus.OK
    summary = response.context["summary"]
    assert summary["models"] == 2
    assert summary["versions_by_status"] == {"ready": 2, "invalid": 1}
    assert summary["deployments_by_state"] == {"failed": 1, "running": 1}
    cards = {c["deployment"].name: c for c in response.context["cards"]}
    house = cards["house"]
    assert house["deployment"].healthy_replicas == 1
    stats = house["stats"]
    assert stats.requests == 100
    assert stats.error_rate == 10.0
    assert stats.per_minute == pytest.approx(100 / 60, abs=0.01)
    # percentile_cont on PostgreSQL (50.5, 95.05, 99.01); nearest rank on SQLite (50, 95, 99)
    assert stats.p50 == pytest.approx(50.5, abs=0.6)
    assert stats.p95 == pytest.approx(95.05, abs=0.6)
    assert stats.p99 == pytest.approx(99.01, abs=0.6)
    assert cards["iris"]["stats"].requests == 0
    html = response.content.decode()
    assert "1/2 healthy" in html and "0/1 healthy" in html
    assert "house-model v1" in html
    assert "No Celery worker answers" not in html


@pytest.mark.django_db
def test_series_buckets_requests_errors_and_percentiles(role_client):
    make_deployment("house")
    make_deployment("other")
    log_calls("house", [10, 20, 30, 40], ago=timedelta(minutes=10), errors=1)
    log_calls("house", [100, 200], ago=timedelta(minutes=2))
    log_calls("other", [999] * 5, ago=timedelta(minutes=2))

    client = role_client("viewer")
    one = client.get(reverse("metrics-series"), {"range": "hour", "deployment": "house"}).json()
    everything = client.get(reverse("metrics-series"), {"range": "hour"}).json()

    assert one["bucket_seconds"] == 60
    assert 60 <= len(one["labels"]) <= 61
    assert len(one["requests"]) == len(one["labels"]) == len(one["p99"])
    assert one["total_requests"] == 6 and one["total_errors"] == 1
    assert sorted(n for n in one["requests"] if n) == [2, 4]
    busy = one["requests"].index(4)
    assert one["errors"][busy] == 1
    assert one["p50"][busy] == pytest.approx(25, abs=5.1)
    assert one["p50"][0] is None  # an empty bucket has no latency, not zero
    assert everything["total_requests"] == 11


@pytest.mark.django_db
@pytest.mark.parametrize(
    "range_key,bucket", [("hour", 60), ("day", 3600), ("week", 14400), ("bogus", 60)]
)
def test_range_picker_sets_window_and_bucket(role_client, range_key, bucket):
    log_calls("house", [1.0], ago=timedelta(hours=30))
    data = role_client("viewer").get(reverse("metrics-series"), {"range": range_key}).json()
    assert data["bucket_seconds"] == bucket
    assert data["total_requests"] == (1 if range_key == "week" else 0)


@pytest.mark.django_db
def test_dashboard_data_returns_live_fragment_series_and_health(role_client, one_worker):
    make_deployment("house")
    log_calls("house", [3.0, 4.0])
    response = role_client("viewer").get(reverse("dashboard-data"), {"range": "day"})
    assert response.status_code == HTTPStatus.OK
    data = response.json()
    assert 'data-deployment="house"' in data["html"]
    assert data["series"]["range"] == "day"
    assert data["series"]["total_requests"] == 2
    assert data["health"]["alive"] is True
    assert data["health"]["workers"] == ["w1@host"]
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_dashboard_endpoints_need_a_role(role_client, make_user):
    anonymous = role_client(None)
    for name in ("dashboard-data", "metrics-series"):
        response = anonymous.get(reverse(name))
        assert response.status_code == HTTPStatus.FOUND
    from django.test import Client

    no_role = Client()
    no_role.force_login(make_user(None))
    assert no_role.get(reverse("dashboard-data")).status_code == HTTPStatus.FORBIDDEN


@pytest.mark.django_db
def test_red_banner_when_no_worker_answers(role_client, no_workers):
    response = role_client("viewer").get(reverse("home"))
    html = response.content.decode()
    assert 'id="worker-banner"' in html
    assert "No Celery worker answers" in html
    assert "none answering" in html


@pytest.mark.django_db
def test_worker_ping_is_cached_between_polls(role_client, monkeypatch):
    calls = []

    def ping():
        calls.append(1)
        return {"workers": ["w1@host"], "broker_ok": True, "broker_error": ""}

    monkeypatch.setattr(selectors, "_ping_workers", ping)
    client = role_client("viewer")
    for _ in range(3):
        assert client.get(reverse("dashboard-data")).status_code == HTTPStatus.OK
    assert len(calls) == 1


@pytest.mark.django_db
def test_empty_dashboard_invites_an_upload(role_client, one_worker):
    deployer = role_client("deployer").get(reverse("home")).content.decode()
    viewer = role_client("viewer").get(reverse("home")).content.decode()
    assert "No deployments yet" in deployer and "Upload your first model" in deployer
    assert "Upload your first model" not in viewer
    assert "No prediction calls in this range yet" in viewer


@pytest.mark.django_db
def test_reconcile_task_stamps_its_last_run(monkeypatch, role_client, one_worker):
    from deployments_app import services, tasks

    assert selectors.worker_health()["reconcile_last"] is None
    monkeypatch.setattr(services, "reconcile", lambda: None)
    tasks.reconcile()
    health = selectors.worker_health()
    assert health["reconcile_last"] is not None
    assert health["reconcile_stale"] is False
    assert "last run" in role_client("viewer").get(reverse("home")).content.decode()


@pytest.mark.django_db
def test_queue_length_is_read_from_redis(one_worker):
    require(dj_settings.CELERY_BROKER_URL.startswith("redis://"), "a Redis broker")
    import redis

    from portal.celery import app

    queue = f"portal-test-queue-{uuid.uuid4().hex[:8]}"
    old_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    client = redis.Redis.from_url(dj_settings.CELERY_BROKER_URL)
    try:
        client.rpush(queue, "a", "b", "c")
        health = selectors.worker_health()
    finally:
        client.delete(queue)
        app.conf.task_default_queue = old_queue
    assert health["queue"] == queue
    assert health["queue_length"] == 3


def test_live_worker_is_seen_by_its_heartbeat(celery_worker_process, settings):
    """The real thing: the session's Celery worker beats into the cache this process reads."""
    require(bool(dj_settings.REDIS_URL), "Redis (the cache the worker and the test share)")
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": dj_settings.REDIS_URL,
        }
    }
    from tests.conftest import wait_for

    def alive():
        return selectors._ping_workers()["workers"]

    workers = wait_for(alive, timeout=60, interval=1, what="a worker's heartbeat")
    assert any(name.startswith("portal-test-") for name in workers)


@pytest.mark.django_db
def test_dashboard_query_count_does_not_grow_with_deployments(
    role_client, one_worker, django_assert_max_num_queries
):
    for i in range(8):
        make_deployment(f"d{i}")
        log_calls(f"d{i}", [1.0, 2.0])
    client = role_client("viewer")
    client.get(reverse("home"))  # warm the session and roles
    with django_assert_max_num_queries(12):
        assert client.get(reverse("home")).status_code == HTTPStatus.OK


# ---------------------------------------------------------------------- deployment page


@pytest.mark.django_db
def test_deployment_page_shows_figures_latest_calls_and_try_it(role_client):
    make_deployment("house")
    log_calls("house", range(1, 26), errors=2)
    response = role_client("deployer").get(reverse("deployment-detail", args=["house"]))
    html = response.content.decode()
    assert response.status_code == HTTPStatus.OK
    assert len(response.context["calls"]) == 20
    assert response.context["stats"].requests == 25
    assert 'id="try-form"' in html
    assert 'data-url="/api/v1/deployments/house/predict"' in html
    assert "[\n      1.0,\n      2.0,\n      3.0\n    ]" in response.context["try_it_body"]
    assert 'id="chart-requests"' in html and reverse("metrics-series") in html


@pytest.mark.django_db
def test_viewer_sees_deployment_figures_but_no_try_it(role_client):
    make_deployment("house")
    html = role_client("viewer").get(reverse("deployment-detail", args=["house"])).content.decode()
    assert 'id="try-form"' not in html
    assert 'id="latest-calls"' in html and "No calls yet." in html
