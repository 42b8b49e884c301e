"""Reading drift snapshots: latest_drift (the alert rule's figure), the panel's table and the
dashboard card, from rows in the real database (the scoring itself: test_drift.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.template.loader import render_to_string
from django.utils import timezone

from deployments_app.models import DriftSnapshot
from deployments_app.monitoring import drift
from tests.deployments_app.test_capture_policy import deployment  # noqa: F401 - a fixture

pytestmark = pytest.mark.django_db


def _window(deployment, end, scores: dict[str, float]) -> None:  # noqa: F811
    for feature, psi in scores.items():
        DriftSnapshot.objects.create(
            deployment=deployment, version_number=1, window_start=end - timedelta(hours=1),
            window_end=end, feature=feature, psi=psi,
            kind="prediction" if feature == DriftSnapshot.PREDICTION else "number",
        )  # fmt: skip


def test_latest_drift_reads_the_newest_window_and_its_worst_input_feature(deployment):  # noqa: F811
    assert drift.latest_drift(deployment) == {}
    now = timezone.now()
    _window(deployment, now - timedelta(minutes=5), {"age": 0.9, "note": 0.01})
    _window(deployment, now, {"age": 0.02, "note": 0.3, DriftSnapshot.PREDICTION: 1.5})
    latest = drift.latest_drift(deployment.pk)
    assert latest == {"age": 0.02, "note": 0.3, DriftSnapshot.PREDICTION: 1.5,
                      "worst": ("note", 0.3)}  # fmt: skip
    table = drift.drift_table(deployment)
    assert [row["feature"] for row in table] == ["note", "age", DriftSnapshot.PREDICTION]
    assert table[0]["history"] == [0.01, 0.3] and table[0]["level"] == "major"
    assert table[0]["sparkline"].count(",") == 2


def test_dashboard_card_names_each_deployments_worst_feature(deployment):  # noqa: F811
    assert drift.drift_panel_context(None) == {"drift_cards": []}
    _window(deployment, timezone.now(), {"age": 0.15, "note": 0.05})
    context = drift.drift_panel_context(None)
    assert context["drift_cards"] == [
        {"deployment": "people", "feature": "age", "psi": 0.15, "level": "moderate",
         "badge": "degraded", "prediction_psi": None}
    ]  # fmt: skip
    html = render_to_string("deployments_app/_drift_card.html", context)
    assert 'data-deployment="people"' in html and "<code>age</code>" in html


def test_category_shares_missing_and_unseen_values_are_scored():
    from deployments_app.monitoring import stats

    reference = stats.profile(["a"] * 50 + ["b"] * 50, "category")
    same = stats.compare(reference, ["a"] * 48 + ["b"] * 52)
    assert same["psi"] < 0.01 and same["chi2_p"] > 0.5 and same["missing_share"] == 0
    shifted = stats.compare(reference, ["a"] * 10 + ["b"] * 60 + ["c"] * 20 + [None] * 10)
    assert shifted["psi"] > drift.PSI_MAJOR and shifted["chi2_p"] < 0.001
    assert shifted["missing_share"] == pytest.approx(0.1)
    assert shifted["out_of_range_share"] == pytest.approx(20 / 90)  # "c": never in the reference
    numbers = stats.profile([float(i) for i in range(100)], "number")
    assert stats.compare(numbers, [float(i) for i in range(0, 100, 2)])["psi"] < 0.05
    moved = stats.compare(numbers, [float(i) + 50 for i in range(100)])
    assert moved["psi"] > drift.PSI_MAJOR and moved["ks"] == pytest.approx(0.5)
    assert moved["out_of_range_share"] == pytest.approx(0.5)
