"""Drift of captured inputs (and predictions) against a version's reference sample.

Reads: `latest_drift(deployment)` is what the drift alert rule and the pages ask.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef

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


HISTORY_POINTS = 24


def drift_table(deployment: Deployment, *, points: int = HISTORY_POINTS) -> list[dict[str, Any]]:
    """The latest window's snapshot of each feature, worst PSI first, each with the PSI of
    its last `points` windows (oldest first) for a sparkline."""
    windows = list(
        DriftSnapshot.objects.filter(deployment=deployment)
        .order_by("-window_end")
        .values_list("window_end", flat=True)
        .distinct()[:points]
    )
    if not windows:
        return []
    history: dict[str, list[float]] = {}
    for feature, score in (
        DriftSnapshot.objects.filter(deployment=deployment, window_end__gte=windows[-1])
        .order_by("window_end")
        .values_list("feature", "psi")
    ):
        history.setdefault(feature, []).append(score)
    latest = DriftSnapshot.objects.filter(deployment=deployment, window_end=windows[0])
    table = [
        {
            "feature": s.feature,
            "kind": s.kind,
            "psi": s.psi,
            "ks": s.ks,
            "chi2_p": s.chi2_p,
            "missing_share": s.missing_share,
            "out_of_range_share": s.out_of_range_share,
            "count": s.count,
            "window_start": s.window_start,
            "window_end": s.window_end,
            "level": level(s.psi),
            "badge": BADGES[level(s.psi)],
            "history": history.get(s.feature, []),
            "sparkline": sparkline(history.get(s.feature, [])),
        }
        for s in latest
    ]
    return sorted(table, key=lambda row: (row["kind"] == "prediction", -row["psi"]))


# The usual reading of a PSI: below 0.1 stable, up to 0.25 a moderate shift, above that major.
PSI_MODERATE, PSI_MAJOR = 0.1, 0.25


def level(score: float) -> str:
    return "major" if score >= PSI_MAJOR else "moderate" if score >= PSI_MODERATE else "stable"


BADGES = {"stable": "ok", "moderate": "degraded", "major": "failed"}  # the CSS badge classes


def sparkline(values: list[float], width: int = 120, height: int = 24) -> str:
    """SVG polyline points for `values` (scaled to at least PSI_MAJOR, so noise stays flat)."""
    if not values:
        return ""
    top = max(max(values), PSI_MAJOR)
    step = width / max(len(values) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}" for i, v in enumerate(values)
    )


def drift_card(deployment: Deployment) -> dict[str, Any] | None:
    """The dashboard card's data: the worst input feature of the latest window (None: no
    drift computed yet)."""
    latest = latest_drift(deployment)
    if not latest or latest.get("worst") is None:
        return None
    feature, score = latest["worst"]
    return {
        "deployment": deployment.name,
        "feature": feature,
        "psi": score,
        "level": level(score),
        "badge": BADGES[level(score)],
        "prediction_psi": latest.get(DriftSnapshot.PREDICTION),
    }


def drift_cards(deployments) -> list[dict[str, Any]]:
    """Cards for the deployments that have drift scores, worst first (the dashboard's)."""
    cards = [card for d in deployments if (card := drift_card(d)) is not None]
    return sorted(cards, key=lambda card: -card["psi"])


def drift_panel_context(request: Any) -> dict[str, Any]:
    """The dashboard panel's context (portal.registry): one card per deployment with drift
    scores, worst first; rendered by templates/deployments_app/_drift_card.html."""
    scored = DriftSnapshot.objects.filter(deployment=OuterRef("pk"))  # the index answers it
    deployments = Deployment.objects.filter(Exists(scored))
    return {"drift_cards": drift_cards(deployments)}
