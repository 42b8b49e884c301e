"""Drift of captured inputs (and predictions) against a version's reference sample.

Reads: `latest_drift(deployment)` is what the drift alert rule and the pages ask.
"""

from __future__ import annotations

from typing import Any

from deployments_app.models import Deployment, DriftSnapshot


def latest_drift(deployment: Deployment | int) -> dict[str, Any]:
    """The PSI of each feature in the deployment's latest drift window, the predictions' under
    `DriftSnapshot.PREDICTION`, and `"worst": (feature, psi)` among the input features (None
    when no input feature was scored). Empty when drift was never computed."""
    deployment_id = deployment.pk if isinstance(deployment, Deployment) else int(deployment)
    latest = (
        DriftSnapshot.objects.filter(deployment_id=deployment_id)
        .order_by("-window_end")
        .values_list("window_end", flat=True)
        .first()
    )
    if latest is None:
        return {}
    scores: dict[str, Any] = dict(
        DriftSnapshot.objects.filter(deployment_id=deployment_id, window_end=latest).values_list(
            "feature", "psi"
        )
    )
    features = [(f, s) for f, s in scores.items() if f != DriftSnapshot.PREDICTION]
    scores["worst"] = max(features, key=lambda item: item[1]) if features else None
    return scores
