"""The Celery application shared by the web process, workers and beat."""

import os
import sys

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


_heartbeat_stop = None


@worker_init.connect
def _refuse_to_start_misconfigured(sender=None, **kwargs):
    """A worker runs Django's system checks before it takes a task, as `runportal` does: a
    worker that cannot open the artifact store (a missing or wrong PORTAL_ARTIFACT_KEY) would
    fail every validation and build with an unclear reason. It stops with one line per
    problem and exit status 2 instead (celery logs and swallows a handler's exceptions,
    not SystemExit)."""
    from django.core import checks
    from django.core.exceptions import ImproperlyConfigured

    try:
        problems = [
            m.msg + (f" ({m.hint})" if m.hint else "")
            for m in checks.run_checks()
            if m.level >= checks.ERROR
        ]
    except ImproperlyConfigured as exc:  # a setting the operator must fix (a missing key)
        problems = [str(exc)]
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)


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
