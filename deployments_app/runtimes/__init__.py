"""Runtime backends behind one interface: `docker` and `process`.

Only `runtimes.docker_runtime` imports the Docker SDK. `PORTAL_RUNTIME=auto` (the default)
picks docker when a daemon answers and falls back to local processes otherwise.
"""

from __future__ import annotations

import functools

from django.conf import settings


@functools.lru_cache(maxsize=1)
def _docker_answers() -> bool:
    try:
        from deployments_app.runtimes.docker_runtime import docker_ping

        return docker_ping()
    except Exception:  # noqa: BLE001 - no SDK, no socket, no daemon: all mean "no docker"
        return False


def available_runtimes() -> list[str]:
    """The backends this machine can use now: process always, docker when its daemon answers."""
    return ["docker", "process"] if _docker_answers() else ["process"]


def allowed_runtimes() -> list[str]:
    """What a deployer may choose (PORTAL_ALLOWED_RUNTIMES): `auto` offers docker when its
    daemon answers and process only when it does not."""
    configured = [name.strip() for name in settings.PORTAL_ALLOWED_RUNTIMES if name.strip()]
    if not configured or configured == ["auto"]:
        return ["docker"] if _docker_answers() else ["process"]
    return [name for name in ("docker", "process") if name in configured]


def replica_token(deployment: str) -> str:
    """The token the proxy and the health probes send to `deployment`'s replicas."""
    from deployments_app.runtimes.base import replica_token as derive

    return derive(settings.SECRET_KEY, deployment)


def runtime_name() -> str:
    configured = settings.PORTAL_RUNTIME
    if configured == "auto":
        return "docker" if _docker_answers() else "process"
    return configured


def check_runtime() -> tuple[bool, str]:
    name = runtime_name()
    if name == "docker":
        from deployments_app.runtimes.docker_runtime import docker_ping

        return docker_ping(), "docker daemon answers"
    if name == "process":
        return True, "local processes"
    return False, f"unknown runtime '{name}'"


def get_runtime(name: str | None = None):
    """The runtime backend `name` (default: the configured one), set up from settings."""
    from deployments_app.runtimes.registry import get_runtime as build_runtime

    return build_runtime(
        name or runtime_name(),
        state_root=settings.PORTAL_DATA_DIR / "runtime",
        env_root=settings.PORTAL_ENV_CACHE / "servers",
        build_timeout=settings.PORTAL_BUILD_TIMEOUT,
        instance=settings.PORTAL_INSTANCE,
        token_key=settings.SECRET_KEY,
    )
