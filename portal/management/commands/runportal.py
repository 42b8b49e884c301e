"""Start the web server, a Celery worker and Celery beat; Ctrl-C stops all three."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the portal: web server, Celery worker and Celery beat, until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--web-workers", type=int, default=max(2, os.cpu_count() or 1))
        parser.add_argument("--concurrency", type=int, default=2)

    def handle(self, *args, host, port, web_workers, concurrency, **options):
        python = sys.executable
        data = settings.PORTAL_DATA_DIR
        commands = {
            # uvicorn (uvloop + httptools) serving portal.asgi: prediction calls with an API
            # key on the event loop, everything else in Django's thread pool (a2wsgi).
            "web": [
                python,
                "-m",
                "uvicorn",
                "portal.asgi:application",
                "--host",
                host,
                "--port",
                str(port),
                "--workers",
                str(web_workers),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-proxy-headers",
                "--timeout-graceful-shutdown",
                "10",
            ],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "--loglevel",
                settings.PORTAL_LOG_LEVEL,
                "--concurrency",
                str(concurrency),
                "--hostname",
                "portal@%h",
            ],
            "beat": [
                python,
                "-m",
                "celery",
                "-A",
                "portal",
                "beat",
                "--loglevel",
                settings.PORTAL_LOG_LEVEL,
                "--schedule",
                str(data / "celerybeat-schedule"),
            ],
        }
        procs: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for name, argv in commands.items():
            # Own process groups: Ctrl-C reaches us once, and we stop the children in order.
            procs[name] = subprocess.Popen(argv, start_new_session=True)
        db = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        self.stdout.write(
            self.style.SUCCESS(
                f"\nModel Portal is running at http://{host}:{port}/  "
                f"(database: {db}, broker: {settings.CELERY_BROKER_URL.split('://')[0]}, "
                f"runtime: {settings.PORTAL_RUNTIME})\nPress Ctrl-C to stop.\n"
            )
        )
        exit_code = 0
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    self.stderr.write(f"{name} exited with code {proc.returncode}; stopping")
                    exit_code = 1
                    stopping = True
            time.sleep(0.5)
        self.stdout.write("stopping web, worker and beat...")
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stdout.write("stopped.")
        sys.exit(exit_code)
