"""CPU and memory of a replica on the deployment page, from its runtime (cached there)."""

from __future__ import annotations

import logging

from django import template

from deployments_app.runtimes import get_runtime

register = template.Library()
log = logging.getLogger(__name__)


@register.simple_tag
def replica_usage(deployment, replica):
    """The runtime's `ReplicaUsage` of a running replica, else None (never an error: the
    page must render when the engine is slow or gone)."""
    if replica.state != "running":
        return None
    try:
        return get_runtime(deployment.runtime).replica_usage(replica.name)
    except Exception:  # noqa: BLE001 - an unreachable engine shows as "–"
        log.warning("no usage for replica %s", replica.name, exc_info=True)
        return None


@register.filter
def mebibytes(value) -> str:
    return "–" if value is None else f"{value / 1048576:.0f} MiB"
