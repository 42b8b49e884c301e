"""A task that keeps a worker's pool busy (loaded by test workers with `--include`)."""

import time
from pathlib import Path

from celery import shared_task


@shared_task(ignore_result=True)
def sleep_for(seconds: float, started: str) -> None:
    Path(started).touch()
    time.sleep(seconds)
