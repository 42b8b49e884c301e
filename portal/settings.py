"""Model Portal settings: one module, read from the environment.

`DJANGO_*` variables configure Django itself, `PORTAL_*` configure the portal. Without
`DATABASE_URL`, `CELERY_BROKER_URL` or a Docker daemon the portal runs on embedded defaults
(SQLite, kombu's filesystem transport, the `process` runtime). Debug is off unless
`DJANGO_DEBUG=true`. Without `DJANGO_ALLOWED_HOSTS` the portal runs in local mode: it answers
local host names only, over plain http, with a secret key it makes once under the data dir.
Naming the hosts is serving for real: then it refuses to start without strong secrets and
insists on HTTPS (redirect, secure cookies, HSTS).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files, not a CDN
    "axes",  # failed-login throttling (see Auth below)
    "portal",
    "models_app",
    "deployments_app",
]

MIDDLEWARE = [
    "portal.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into a 429 answer
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.roles",
            ],
        },
    },
]

# --- Storage -------------------------------------------------------------------------------
PORTAL_DATA_DIR = Path(env.str("PORTAL_DATA_DIR", default=str(BASE_DIR / "var")))


def _key_file(path: Path) -> str:
    """A random key made once in `path` (mode 0600); racing processes all read the first."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        try:
            os.write(fd, secrets.token_urlsafe(48).encode())
            os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_text().strip()


# --- Secrets, hosts, HTTPS -----------------------------------------------------------------
LOCAL_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
# Local mode (`make run` on a fresh clone): no host names configured, so only local names
# are answered and only over plain http. Naming hosts means serving others: secrets required.
LOCAL_MODE = not ALLOWED_HOSTS
ALLOWED_HOSTS = ALLOWED_HOSTS or LOCAL_HOSTS
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY and (LOCAL_MODE or DEBUG):
    SECRET_KEY = _key_file(
        Path(env.str("PORTAL_SECRET_KEY_FILE", default=str(PORTAL_DATA_DIR / "secret.key")))
    )
if not DEBUG and len(SECRET_KEY) < 50:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set to a random string of at least 50 characters "
        "when DJANGO_DEBUG=false and DJANGO_ALLOWED_HOSTS is set"
    )
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# The audit chain's HMAC key lives outside the database (portal.audit): PORTAL_AUDIT_KEY, or
# else a random key made once in PORTAL_AUDIT_KEY_FILE (0600). Only a weak explicit key stops.
PORTAL_AUDIT_KEY = env.str("PORTAL_AUDIT_KEY", default="")
if not DEBUG and PORTAL_AUDIT_KEY and len(PORTAL_AUDIT_KEY) < 32:
    raise ImproperlyConfigured(
        "PORTAL_AUDIT_KEY must be a random string of at least 32 characters "
        "(or unset: a key is then made once in PORTAL_AUDIT_KEY_FILE)"
    )
PORTAL_ARTIFACT_DIR = Path(
    env.str("PORTAL_ARTIFACT_DIR", default=str(PORTAL_DATA_DIR / "artifacts"))
)
# Artifacts are encrypted at rest (models_app.storage, models_app.keyprovider): the master key
# is PORTAL_ARTIFACT_KEY (64 hex digits or base64 of 32 bytes) or the file
# PORTAL_ARTIFACT_KEY_FILE; with neither, a key is made once in <data dir>/artifact.key (0600),
# as for the audit key: production works with only a secret key and host names, and a team
# that keeps its store's backups apart from that file (or names its own key) is protected.
# PORTAL_ARTIFACT_KEY_PREVIOUS (comma-separated) still opens artifacts during a rotation.
PORTAL_ARTIFACT_KEY = env.str("PORTAL_ARTIFACT_KEY", default="")
PORTAL_ARTIFACT_KEY_FILE = env.str("PORTAL_ARTIFACT_KEY_FILE", default="")
PORTAL_ARTIFACT_KEY_PREVIOUS = env.str("PORTAL_ARTIFACT_KEY_PREVIOUS", default="")
PORTAL_ARTIFACT_KEY_PROVIDER = env.str(
    "PORTAL_ARTIFACT_KEY_PROVIDER", default="models_app.keyprovider.EnvKeyProvider"
)
# Only the default file is made; a named file that is missing is an error.
PORTAL_ARTIFACT_KEY_FILE_CREATE = not PORTAL_ARTIFACT_KEY and not PORTAL_ARTIFACT_KEY_FILE
if PORTAL_ARTIFACT_KEY_FILE_CREATE:
    PORTAL_ARTIFACT_KEY_FILE = str(PORTAL_DATA_DIR / "artifact.key")
PORTAL_ENV_CACHE = Path(env.str("PORTAL_ENV_CACHE", default=str(PORTAL_DATA_DIR / "envs")))
PORTAL_WHEELHOUSE = Path(env.str("PORTAL_WHEELHOUSE", default=str(PORTAL_DATA_DIR / "wheels")))
PORTAL_UPLOAD_TMP_DIR = Path(
    env.str("PORTAL_UPLOAD_TMP_DIR", default=str(PORTAL_DATA_DIR / "uploads"))
)
PORTAL_MAX_UPLOAD_MB = env.int("PORTAL_MAX_UPLOAD_MB", default=500)
# Deploy, update and roll back only to versions an approver approved (a rejected one never).
PORTAL_REQUIRE_APPROVAL = env.bool("PORTAL_REQUIRE_APPROVAL", default=True)
PORTAL_AUDIT_KEY_FILE = Path(
    env.str("PORTAL_AUDIT_KEY_FILE", default=str(PORTAL_DATA_DIR / "audit.key"))
)
# Append-only checkpoints of the audit chain's head, outside the database.
PORTAL_AUDIT_CHECKPOINT_FILE = Path(
    env.str(
        "PORTAL_AUDIT_CHECKPOINT_FILE", default=str(PORTAL_DATA_DIR / "audit-checkpoints.jsonl")
    )
)
PORTAL_AUDIT_CHECKPOINT_SECONDS = env.float("PORTAL_AUDIT_CHECKPOINT_SECONDS", default=3600.0)

# --- Database ------------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{PORTAL_DATA_DIR / 'portal.sqlite3'}")
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DJANGO_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one SQLite file: wait for locks instead of failing at once.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: a test worker process must see the test database too.
    DATABASES["default"]["TEST"] = {"NAME": str(PORTAL_DATA_DIR / "test.sqlite3")}
elif env.str("PORTAL_TEST_DATABASE", default=""):
    # Two test runs on one PostgreSQL server (a developer's parallel runs) need their own names.
    DATABASES["default"]["TEST"] = {"NAME": env.str("PORTAL_TEST_DATABASE")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Celery --------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
PORTAL_BROKER_DIR = PORTAL_DATA_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(PORTAL_BROKER_DIR / "queue"),
        "data_folder_out": str(PORTAL_BROKER_DIR / "queue"),
        "processed_folder": str(PORTAL_BROKER_DIR / "processed"),
        "control_folder": str(PORTAL_BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_ALWAYS_EAGER = env.bool("PORTAL_TASKS_EAGER", default=False)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
PORTAL_RECONCILE_SECONDS = env.float("PORTAL_RECONCILE_SECONDS", default=10.0)
# Each worker writes a heartbeat this often; the dashboard says no worker answers when none
# beat in three periods.
PORTAL_WORKER_HEARTBEAT_SECONDS = env.float("PORTAL_WORKER_HEARTBEAT_SECONDS", default=5.0)
# Images (process builds) no build record keeps are removed this often, once this old.
PORTAL_IMAGE_PRUNE_SECONDS = env.float("PORTAL_IMAGE_PRUNE_SECONDS", default=6 * 3600.0)
PORTAL_IMAGE_PRUNE_MIN_AGE = env.float("PORTAL_IMAGE_PRUNE_MIN_AGE", default=3600.0)
# Prediction log: raw rows (and captured payloads) are kept this many days, hour and day
# rollups longer; beat folds closed minutes into rollups and runs retention.
PORTAL_PREDICTION_LOG_DAYS = env.int("PORTAL_PREDICTION_LOG_DAYS", default=30)
PORTAL_ROLLUP_DAYS = env.int("PORTAL_ROLLUP_DAYS", default=400)
PORTAL_ROLLUP_SECONDS = env.float("PORTAL_ROLLUP_SECONDS", default=30.0)
PORTAL_RETENTION_SECONDS = env.float("PORTAL_RETENTION_SECONDS", default=3600.0)
# Rollouts and shadow traffic: copies waiting for the shadow per process (then dropped and
# counted), how long shadow pairs are kept, how often the guardrails judge active rollouts.
PORTAL_SHADOW_QUEUE = env.int("PORTAL_SHADOW_QUEUE", default=1000)
PORTAL_SHADOW_DAYS = env.int("PORTAL_SHADOW_DAYS", default=7)
PORTAL_ROLLOUT_JUDGE_SECONDS = env.float("PORTAL_ROLLOUT_JUDGE_SECONDS", default=10.0)
# Alerts: how often beat judges the rules; webhook delivery (timeout, retries after the first
# attempt, first backoff doubled per retry) and whether it may reach non-public addresses.
PORTAL_ALERT_EVALUATE_SECONDS = env.float("PORTAL_ALERT_EVALUATE_SECONDS", default=30.0)
PORTAL_ALERT_WEBHOOK_TIMEOUT = env.float("PORTAL_ALERT_WEBHOOK_TIMEOUT", default=5.0)
PORTAL_ALERT_WEBHOOK_RETRIES = env.int("PORTAL_ALERT_WEBHOOK_RETRIES", default=6)
PORTAL_ALERT_WEBHOOK_BACKOFF_SECONDS = env.float(
    "PORTAL_ALERT_WEBHOOK_BACKOFF_SECONDS", default=10.0
)
PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = env.bool("PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE", default=False)
# Monitoring (issue 19): captured records are kept PORTAL_CAPTURE_DAYS by default (a
# deployment's capture policy may say otherwise); drift is scored every PORTAL_DRIFT_SECONDS
# over the last PORTAL_DRIFT_WINDOW_MINUTES of captured calls (at most PORTAL_DRIFT_MAX_CALLS,
# at least PORTAL_DRIFT_MIN_ROWS rows), snapshots kept PORTAL_DRIFT_DAYS.
PORTAL_CAPTURE_DAYS = env.int("PORTAL_CAPTURE_DAYS", default=7)
PORTAL_DRIFT_SECONDS = env.float("PORTAL_DRIFT_SECONDS", default=300.0)
PORTAL_DRIFT_WINDOW_MINUTES = env.int("PORTAL_DRIFT_WINDOW_MINUTES", default=60)
PORTAL_DRIFT_MAX_CALLS = env.int("PORTAL_DRIFT_MAX_CALLS", default=5000)
PORTAL_DRIFT_MIN_ROWS = env.int("PORTAL_DRIFT_MIN_ROWS", default=30)
PORTAL_DRIFT_DAYS = env.int("PORTAL_DRIFT_DAYS", default=30)
PORTAL_DRIFT_REFERENCE_MAX_MB = env.int("PORTAL_DRIFT_REFERENCE_MAX_MB", default=50)
CELERY_BEAT_SCHEDULE = {
    "drift-scores": {
        "task": "deployments_app.tasks.drift_compute",
        "schedule": PORTAL_DRIFT_SECONDS,
        "options": {"expires": PORTAL_DRIFT_SECONDS},
    },
    "capture-retention": {
        "task": "deployments_app.tasks.capture_retention",
        "schedule": PORTAL_RETENTION_SECONDS,
        "options": {"expires": PORTAL_RETENTION_SECONDS},
    },
    "evaluate-alerts": {
        "task": "deployments_app.tasks.alerts_evaluate",
        "schedule": PORTAL_ALERT_EVALUATE_SECONDS,
        "options": {"expires": PORTAL_ALERT_EVALUATE_SECONDS},
    },
    "judge-rollouts": {
        "task": "deployments_app.tasks.rollouts_judge",
        "schedule": PORTAL_ROLLOUT_JUDGE_SECONDS,
        "options": {"expires": PORTAL_ROLLOUT_JUDGE_SECONDS},
    },
    "fold-prediction-rollups": {
        "task": "deployments_app.tasks.rollups_fold",
        "schedule": PORTAL_ROLLUP_SECONDS,
        "options": {"expires": PORTAL_ROLLUP_SECONDS},
    },
    "prediction-log-retention": {
        "task": "deployments_app.tasks.prediction_log_retention",
        "schedule": PORTAL_RETENTION_SECONDS,
        "options": {"expires": PORTAL_RETENTION_SECONDS},
    },
    "reconcile-deployments": {
        "task": "deployments_app.tasks.reconcile",
        "schedule": PORTAL_RECONCILE_SECONDS,
        # A reconcile that waited longer than one period is superseded by the next one.
        "options": {"expires": PORTAL_RECONCILE_SECONDS},
    },
    "prune-images": {
        "task": "deployments_app.tasks.prune_images",
        "schedule": PORTAL_IMAGE_PRUNE_SECONDS,
        "options": {"expires": PORTAL_IMAGE_PRUNE_SECONDS},
    },
    "audit-checkpoint": {
        "task": "portal.tasks.audit_checkpoint",
        "schedule": PORTAL_AUDIT_CHECKPOINT_SECONDS,
        "options": {"expires": PORTAL_AUDIT_CHECKPOINT_SECONDS},
    },
}

# --- Cache (locks, API-key lookups, rate limits): Redis when configured, else on disk ---
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(PORTAL_DATA_DIR / "cache"),
        }
    }

# --- Runtime -------------------------------------------------------------------------------
# "auto" picks docker when a daemon answers, else process.
PORTAL_RUNTIME = env.str("PORTAL_RUNTIME", default="auto")
# Which runtimes a deployer may choose: "auto" = docker when its daemon answers, else process
# (so process, weaker than a container, is offered only where Docker is not); or a list.
PORTAL_ALLOWED_RUNTIMES = env.list("PORTAL_ALLOWED_RUNTIMES", default=["auto"])
PORTAL_BASE_IMAGE = env.str("PORTAL_BASE_IMAGE", default="python:3.11-slim")
# Names this portal's replicas (`<instance>-<deployment>-<i>`, label `portal.instance`): each
# portal sharing a Docker engine sees and reconciles only its own.
PORTAL_INSTANCE = env.str("PORTAL_INSTANCE", default="portal")
if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,29}", PORTAL_INSTANCE):
    raise ImproperlyConfigured(
        f"PORTAL_INSTANCE={PORTAL_INSTANCE!r}: use 1-30 lowercase letters, digits and dashes"
    )
PORTAL_PUBLISH_HOST = env.str("PORTAL_PUBLISH_HOST", default="127.0.0.1")
PORTAL_BUILD_TIMEOUT = env.int("PORTAL_BUILD_TIMEOUT", default=900)
PORTAL_START_TIMEOUT = env.int("PORTAL_START_TIMEOUT", default=90)
# A running replica whose /health misses every one of these tries is replaced as hung.
PORTAL_LIVENESS_TIMEOUT = env.float("PORTAL_LIVENESS_TIMEOUT", default=5.0)
PORTAL_LIVENESS_TRIES = env.int("PORTAL_LIVENESS_TRIES", default=3)
PORTAL_STALE_SECONDS = env.int("PORTAL_STALE_SECONDS", default=120)
PORTAL_MAX_WORK_ATTEMPTS = env.int("PORTAL_MAX_WORK_ATTEMPTS", default=3)
PORTAL_PREDICT_CONNECT_TIMEOUT = env.float("PORTAL_PREDICT_CONNECT_TIMEOUT", default=1.0)
PORTAL_PREDICT_READ_TIMEOUT = env.float("PORTAL_PREDICT_READ_TIMEOUT", default=30.0)
PORTAL_PREDICT_MAX_BODY_BYTES = env.int("PORTAL_PREDICT_MAX_BODY_BYTES", default=5 * 1024 * 1024)
# Every JSON a request brings (API bodies, form fields; prediction bodies up to the limit
# above) is refused with a 400 past these (portal.jsonlimits).
PORTAL_JSON_MAX_BYTES = env.int("PORTAL_JSON_MAX_BYTES", default=1024 * 1024)
PORTAL_JSON_MAX_DEPTH = env.int("PORTAL_JSON_MAX_DEPTH", default=32)
# Invalid API keys per address per minute; past it the address gets 429 for the minute.
PORTAL_INVALID_KEY_LIMIT = env.int("PORTAL_INVALID_KEY_LIMIT", default=30)
# Calls asking for explanations ("explain": true) per key or user per minute, beside the
# key's own limit: each costs up to thousands of model evaluations in the replica.
PORTAL_EXPLAIN_RATE_PER_MINUTE = env.int("PORTAL_EXPLAIN_RATE_PER_MINUTE", default=60)
# The highest per-minute rate limit a non-admin may give a key (admins may go beyond).
PORTAL_MAX_KEY_RATE_LIMIT = env.int("PORTAL_MAX_KEY_RATE_LIMIT", default=6000)
# HTTP basic auth on the API; false leaves personal access tokens and browser sessions.
PORTAL_API_BASIC_AUTH = env.bool("PORTAL_API_BASIC_AUTH", default=True)
# Threads per web process for Django's pages and API (the prediction lane needs none).
PORTAL_WEB_THREADS = env.int("PORTAL_WEB_THREADS", default=8)
PORTAL_METRICS_ALLOW = env.list("PORTAL_METRICS_ALLOW", default=["127.0.0.1", "::1"])
PORTAL_SANDBOX_TIMEOUT = env.int("PORTAL_SANDBOX_TIMEOUT", default=120)
PORTAL_SANDBOX_MEMORY_MB = env.int("PORTAL_SANDBOX_MEMORY_MB", default=2048)
# ONNX export at validation (models_app.validation.onnx_export): in the sandbox, in an
# environment of the model's pins plus skl2onnx/onnx/onnxruntime, kept only when it passes
# the parity gate (identical labels, max scaled |delta| <= PORTAL_ONNX_TOLERANCE on the input
# example plus PORTAL_ONNX_SAMPLE_ROWS reference rows). Off by default: it adds 3-8 s to each
# validation (about doubling it) and builds one more environment per scikit-learn version.
PORTAL_ONNX_EXPORT = env.bool("PORTAL_ONNX_EXPORT", default=False)
PORTAL_ONNX_TOLERANCE = env.float("PORTAL_ONNX_TOLERANCE", default=1e-4)
PORTAL_ONNX_SAMPLE_ROWS = env.int("PORTAL_ONNX_SAMPLE_ROWS", default=200)
# Validation fails, naming why, on a host whose sandbox isolates less than this
# (none < userns < namespaces, as models_app.validation.sandbox.isolation() reports).
PORTAL_SANDBOX_MIN_ISOLATION = env.str("PORTAL_SANDBOX_MIN_ISOLATION", default="namespaces")
if PORTAL_SANDBOX_MIN_ISOLATION not in ("none", "userns", "namespaces"):
    raise ImproperlyConfigured(
        f"PORTAL_SANDBOX_MIN_ISOLATION={PORTAL_SANDBOX_MIN_ISOLATION!r}: "
        "use none, userns or namespaces"
    )

# --- Auth ----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Failed logins (login page, admin, API basic auth) lock out the account and, separately, the
# address for a while: guessing passwords costs PORTAL_LOGIN_FAILURE_LIMIT tries per cooloff.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("PORTAL_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(seconds=env.int("PORTAL_LOGIN_COOLOFF_SECONDS", default=900))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own: account, address
AXES_CLIENT_IP_CALLABLE = "portal.audit.client_ip"  # the address every other record uses
AXES_RESET_ON_SUCCESS = False  # a login of one's own must not reset an address's failures
AXES_HTTP_RESPONSE_CODE = 429
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- I18N / static -------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
FILE_UPLOAD_TEMP_DIR = str(PORTAL_UPLOAD_TMP_DIR)
# Uploads above 2.5 MB stream to FILE_UPLOAD_TEMP_DIR instead of memory (Django's default).
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# --- Security ------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
# HTTPS is insisted on when serving named hosts; local mode is plain http on this machine
# (a browser on http://127.0.0.1:8000 would never send a secure cookie back).
_HTTPS = not DEBUG and not LOCAL_MODE
SESSION_COOKIE_SECURE = _HTTPS
CSRF_COOKIE_SECURE = _HTTPS
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=_HTTPS)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31536000 if _HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _HTTPS
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
if env.bool("DJANGO_BEHIND_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SILENCED_SYSTEM_CHECKS = (
    [] if env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False) else ["security.W021"]
)

# --- DRF -----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "portal.authentication.AccessTokenAuthentication",
        "portal.authentication.LockoutBasicAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "portal.api.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Model Portal API",
    "DESCRIPTION": "Upload, validate, deploy and call scikit-learn models.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "deployments_app.predict.openapi.add_prediction_paths",
    ],
    "ENUM_NAME_OVERRIDES": {
        "VersionStatusEnum": "models_app.models.ModelVersion.Status",
        "BuildStatusEnum": "deployments_app.models.Build.Status",
    },
    # The schema and its docs page are public: they describe the API, they hold no data.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

PORTAL_LOG_LEVEL = env.str("PORTAL_LOG_LEVEL", default="INFO").upper()
# Celery's routine lines (each task received and succeeded, each beat tick: the reconciler's
# every PORTAL_RECONCILE_SECONDS) only at DEBUG; INFO keeps one line per real change.
_CELERY_ROUTINE = "DEBUG" if PORTAL_LOG_LEVEL == "DEBUG" else "WARNING"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": PORTAL_LOG_LEVEL},
    "loggers": {
        "celery.beat": {"level": _CELERY_ROUTINE},
        "celery.app.trace": {"level": _CELERY_ROUTINE},
        "celery.worker.strategy": {"level": _CELERY_ROUTINE},
        "django.db.backends": {"level": "WARNING"},
        # One line per forwarded prediction otherwise: noise, and measurable cost.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        "axes.apps": {"level": "WARNING"},  # its version banner on every command
    },
}

# With them the filesystem broker's folders: a worker declaring its queue before anything
# else created them would die at start (kombu does not create them).
_broker_dirs = [Path(p) for k, p in CELERY_BROKER_TRANSPORT_OPTIONS.items() if "folder" in k]
_made_dirs = [PORTAL_DATA_DIR, PORTAL_ARTIFACT_DIR, PORTAL_UPLOAD_TMP_DIR, STATIC_ROOT]
for _dir in [*_made_dirs, *_broker_dirs]:
    _dir.mkdir(parents=True, exist_ok=True)
