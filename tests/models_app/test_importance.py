"""Global importance at validation: permutation importance on the input example, computed in
the sandbox (models_app/validation/inspect_model.py) inside each fixture's own environment,
stored in version.report["importance"] and drawn on the version page."""

from __future__ import annotations

import shutil
import time

import pytest
from django.urls import reverse

from models_app.models import ModelVersion, RegisteredModel
from models_app.validation.pipeline import validate_artifact
from tests.conftest import FIXTURE_DIR


@pytest.mark.parametrize(
    "name,features",
    [
        ("spam", {"content", "sender"}),  # a pipeline: the ORIGINAL columns
        ("breast-cancer", {f"x{i}" for i in range(30)}),  # 30 positional features
        ("house-price", {"x0", "x1", "x2"}),
    ],
)
def test_validation_ranks_the_features_within_a_bounded_cost(name, features, manifest, tmp_path):
    entry = next(e for e in manifest.values() if e["name"] == name)
    path = tmp_path / entry["file"]
    shutil.copy(FIXTURE_DIR / entry["file"], path)
    started = time.perf_counter()
    outcome = validate_artifact(path=path, example_rows=entry["input_example"])
    total_ms = (time.perf_counter() - started) * 1000
    assert outcome.ok, outcome.reason
    importance = outcome.report["importance"]
    assert {f["name"] for f in importance["features"]} == features
    assert importance["rows"] == len(entry["input_example"])
    assert importance["features"][0]["importance"] > 0  # something moves the output
    values = [abs(f["importance"]) for f in importance["features"]]
    assert values == sorted(values, reverse=True)
    # Bounded: at most IMPORTANCE_MAX_EVALUATIONS predict calls (30 features: 5 repeats).
    assert len(features) * importance["repeats"] <= 300
    assert importance["ms"] < 0.5 * total_ms
    print(f"{name}: importance {importance['ms']} ms of a {total_ms:.0f} ms validation")


def test_an_example_of_one_row_says_why_there_is_no_importance(manifest, tmp_path):
    entry = next(e for e in manifest.values() if e["name"] == "house-price")
    path = tmp_path / entry["file"]
    shutil.copy(FIXTURE_DIR / entry["file"], path)
    outcome = validate_artifact(path=path, example_rows=entry["input_example"][:1])
    assert outcome.ok, outcome.reason
    assert "at least 2 rows" in outcome.report["importance"]["skipped"]


def test_the_version_page_draws_the_importance_chart(role_client):
    model = RegisteredModel.objects.create(name="m")
    report = {
        "importance": {
            "method": "permutation",
            "output": "predict_proba",
            "score": "mean absolute change",
            "rows": 2,
            "repeats": 5,
            "ms": 12.5,
            "features": [
                {"name": "sender", "importance": 0.4, "std": 0.1},
                {"name": "content", "importance": 0.1, "std": 0.05},
            ],
        }
    }
    ModelVersion.objects.create(
        model=model,
        number=1,
        status="ready",
        artifact_sha256="0" * 64,
        artifact_size=1,
        report=report,
    )
    page = role_client("viewer").get(reverse("version-detail", args=["m", 1])).content.decode()
    assert 'id="importance-chart"' in page
    assert page.index("<code>sender</code>") < page.index("<code>content</code>")
    assert "width:100%" in page and "width:25%" in page  # bars relative to the largest
