"""The Celery application shared by the web process, workers and beat."""

import os

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


_heartbeat_stop = None


@worker_ready.connect
def _start_heartbeat(sender, **kwargs):
    """The dashboard knows a worker is alive from its heartbeat (portal.heartbeat)."""
    global _heartbeat_stop
    from portal.heartbeat import worker_heartbeat_start

    queues = sorted(sender.app.amqp.queues.consume_from)
    _heartbeat_stop = worker_heartbeat_start(hostname=sender.hostname, queues=queues)


@worker_shutdown.connect
def _stop_heartbeat(sender, **kwargs):
    from portal.heartbeat import worker_gone

    if _heartbeat_stop is not None:
        _heartbeat_stop.set()
        worker_gone(hostname=sender.hostname)
