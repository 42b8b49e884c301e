#!/usr/bin/env bash
# Run the portal: venv + dependencies, migrations, first admin, static files, then the web
# server, a Celery worker and Celery beat (Ctrl-C stops all three). Uses DATABASE_URL,
# CELERY_BROKER_URL / REDIS_URL and a Docker daemon when present; embedded defaults otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py ensure_admin
.venv/bin/python manage.py collectstatic --noinput --verbosity 0
exec .venv/bin/python manage.py runportal --host "${PORTAL_HOST:-127.0.0.1}" --port "${PORTAL_PORT:-8000}"
