"""`get_runtime(name, **settings)`: a runtime backend by name, without Django.

Callers pass the settings they hold (``state_root`` and ``env_root`` for the process
backend, ``build_timeout`` for docker); unknown keys are ignored so one call site can
serve every backend.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from deployments_app.runtimes.base import Runtime

RUNTIME_NAMES = ("docker", "process")


def _accepted(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in settings.items() if k in params}


def get_runtime(name: str, **settings: Any) -> Runtime:
    """`docker`, `process`, or `auto` (docker when its daemon answers, else process)."""
    if name == "auto":
        try:
            from deployments_app.runtimes.docker_runtime import DockerRuntime

            name = "docker" if DockerRuntime().ping() else "process"
        except Exception:  # noqa: BLE001 - without the SDK there is no docker either
            name = "process"
    if name == "docker":
        from deployments_app.runtimes.docker_runtime import DockerRuntime

        return DockerRuntime(**_accepted(DockerRuntime, settings))
    if name == "process":
        from deployments_app.runtimes.process_runtime import ProcessRuntime

        for key in ("state_root", "env_root"):
            if key not in settings:
                raise ValueError(f"the process runtime needs `{key}`")
            settings[key] = Path(settings[key])
        return ProcessRuntime(**_accepted(ProcessRuntime, settings))
    raise ValueError(f"unknown runtime {name!r}; expected one of {', '.join(RUNTIME_NAMES)}")
