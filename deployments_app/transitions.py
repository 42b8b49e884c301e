"""Which deployment commands make sense in which state: one table, read by the services
(which refuse the rest) and by the page (which shows only these buttons)."""

from __future__ import annotations

from deployments_app.models import Deployment
from portal.errors import ConflictError

State = Deployment.State
SETTLED_SERVING = (State.RUNNING, State.DEGRADED)

# Start on a running deployment would send it back to pending and rebuild it; Stop on a
# stopped one would queue work that changes nothing. Restart is the way to redo a running one.
ALLOWED: dict[str, tuple[str, ...]] = {
    "start": (State.STOPPED, State.FAILED),
    "stop": (State.PENDING, State.BUILDING, State.STARTING, *SETTLED_SERVING, State.FAILED),
    "restart": (*SETTLED_SERVING, State.FAILED),
    "scale": (*SETTLED_SERVING, State.STOPPED),
    "update": SETTLED_SERVING,
    "rollback": SETTLED_SERVING,
    "delete": tuple(State.values),
}

REASONS = {
    "start": "it is {state}: only a stopped or failed deployment can be started (use Restart)",
    "stop": "it is {state} already",
}


def allowed_actions(deployment: Deployment) -> set[str]:
    return {action for action, states in ALLOWED.items() if deployment.state in states}


def check_action(deployment: Deployment, action: str) -> None:
    """Raise ConflictError when `action` makes no sense in the deployment's current state."""
    if deployment.state in ALLOWED[action]:
        return
    reason = REASONS.get(action, "it is {state}; wait until it settles")
    raise ConflictError(
        f"cannot {action} '{deployment.name}': {reason.format(state=deployment.state)}"
    )
