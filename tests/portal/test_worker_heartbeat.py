"""The dashboard's "No Celery worker answers" banner follows the workers' heartbeats: it
stays away while a real worker is busy with tasks and appears once no worker beats."""

from __future__ import annotations

import signal
import time
import uuid

import pytest
from django.conf import settings as dj_settings
from django.core.cache import cache

from portal import heartbeat, selectors
from tests.conftest import WorkerHandle, wait_for
from tests.services import require

BEAT = 1.0  # the test worker's heartbeat period (seconds)


@pytest.fixture
def beats(settings):
    settings.PORTAL_WORKER_HEARTBEAT_SECONDS = BEAT
    settings.PORTAL_INSTANCE = f"hb{uuid.uuid4().hex[:8]}"  # a roster of this test alone
    yield settings.PORTAL_INSTANCE
    cache.delete_many([heartbeat._workers_key()])


def test_a_beating_worker_is_live_until_it_stops_or_goes_quiet(beats, settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    heartbeat.worker_beat(hostname="w1@h", queues=["celery"])
    heartbeat.worker_beat(hostname="w2@h", queues=["other"])
    assert heartbeat.live_workers(queue="celery") == ["w1@h"]  # w2 takes other tasks
    heartbeat.worker_gone(hostname="w1@h")
    assert heartbeat.live_workers(queue="celery") == []
    heartbeat.worker_beat(hostname="w1@h", queues=["celery"])
    assert heartbeat.live_workers(queue="celery") == ["w1@h"]


@pytest.mark.slow
def test_a_worker_busy_with_tasks_still_counts_and_a_killed_one_stops_counting(
    beats, worker_factory, tmp_path, settings
):
    """A real worker, both pool processes busy in tasks: the dashboard counts it alive the
    whole time; killed (no shutdown handler runs), it drops out within three beats."""
    require(bool(dj_settings.REDIS_URL), "Redis (the cache the worker and the test share)")
    from portal.celery import app

    queue = f"portal-busy-{uuid.uuid4().hex[:8]}"
    env = {
        **worker_factory.env,
        "PORTAL_INSTANCE": beats,
        "PORTAL_WORKER_HEARTBEAT_SECONDS": str(BEAT),
    }
    worker = WorkerHandle(
        queue, worker_factory.storage, env, args=("--include", "tests.portal.busy_tasks")
    ).start()
    old_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    try:
        name = wait_for(
            lambda: selectors._ping_workers()["workers"], timeout=60, what="the worker's beat"
        )[0]
        assert name.startswith(queue)
        started = [tmp_path / f"started-{i}" for i in range(4)]
        for path in started:
            app.send_task("tests.portal.busy_tasks.sleep_for", args=[30, str(path)], queue=queue)
        wait_for(lambda: all(p.exists() for p in started[:2]), timeout=60, what="busy pool")
        deadline = time.monotonic() + 6 * BEAT
        while time.monotonic() < deadline:  # twice the time a beat stays fresh
            health = selectors.worker_health(refresh=True)
            assert health["alive"] and name in health["workers"], health
            time.sleep(BEAT / 2)
        worker.kill(signal.SIGKILL)
        wait_for(
            lambda: not selectors.worker_health(refresh=True)["alive"],
            timeout=4 * BEAT + 2,
            what="the killed worker to drop out",
        )
    finally:
        app.conf.task_default_queue = old_queue
        worker.kill(signal.SIGKILL)
        if dj_settings.CELERY_BROKER_URL.startswith("redis://"):
            import redis

            redis.Redis.from_url(dj_settings.CELERY_BROKER_URL).delete(queue)
