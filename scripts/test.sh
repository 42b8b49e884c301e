#!/usr/bin/env bash
# Make this Debian machine ready (as root) and run the whole suite against real PostgreSQL,
# Redis, the Docker engine and real scikit-learn models. A second run skips what is done.
# Extra arguments go to pytest (e.g. `make test ARGS="-k audit"`).
set -euo pipefail
cd "$(dirname "$0")/.."

DATABASE_URL=$(bash scripts/services.sh all)
export DATABASE_URL
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export CELERY_BROKER_URL=${CELERY_BROKER_URL:-$REDIS_URL}
export PORTAL_BASE_IMAGE=${PORTAL_BASE_IMAGE:-portal-base:bookworm}
export PORTAL_RUNTIME=${PORTAL_RUNTIME:-docker}
# Per-version virtual environments and wheels are a cache, like pip's: kept between runs.
export PORTAL_ENV_CACHE=${PORTAL_ENV_CACHE:-/opt/model-portal/envs}
export PORTAL_WHEELHOUSE=${PORTAL_WHEELHOUSE:-/opt/model-portal/wheels}
# A missing service fails the run instead of skipping its tests.
export PORTAL_REQUIRE_SERVICES=1

bash scripts/bootstrap.sh
echo "==> lint (ruff) and migrations check" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check --quiet portal models_app deployments_app tests bench scripts manage.py \
  || { echo "error: run '.venv/bin/ruff format .'" >&2; exit 1; }
.venv/bin/python manage.py makemigrations --check --dry-run >/dev/null
echo "==> pytest" >&2
set +e
.venv/bin/pytest "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $status
