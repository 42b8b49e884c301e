"""Drift against a real deployed model: the house-price regressor in real containers, called
through the portal's proxy with capture on and a field masked; the beat task scores the
captured window against a reference dataset uploaded for the version."""

# ruff: noqa: S311 - seeded synthetic traffic, not security
from __future__ import annotations

import json
import random
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.utils import timezone

from deployments_app import tasks
from deployments_app.models import Deployment, DriftReference, DriftSnapshot, PredictionLog, Replica
from deployments_app.monitoring import capture, drift
from deployments_app.monitoring import services as monitoring
from deployments_app.predict import proxy
from models_app.models import ModelVersion, RegisteredModel
from portal.audit import Actor
from portal.models import AuditEvent
from tests.deployments_app.test_predict import SECRET, key_for, serve_models  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _shared_secret(settings):
    settings.SECRET_KEY = SECRET


@pytest.fixture(scope="module")
def served(tmp_path_factory, django_db_blocker):
    with serve_models({"house": "house_price_linreg.pkl"}, tmp_path_factory) as found:
        yield found


@pytest.fixture
def house(served, db):
    proxy._targets.clear()
    data, _runtime = served
    outcome, replicas, entry = data["house"]
    model = RegisteredModel.objects.create(name="ptest-house")
    version = ModelVersion.objects.create(
        model=model, number=1, status="ready", artifact_sha256="1" * 64, artifact_size=1,
        format=outcome.format, sklearn_version=outcome.sklearn_version, task="regression",
        python_requirements=outcome.requirements, schema=outcome.schema,
        input_example=entry["input_example"],
    )  # fmt: skip
    deployment = Deployment.objects.create(
        name="ptest-house", model=model, version=version, runtime="docker", state="running",
        replicas=2,
    )  # fmt: skip
    for index, (name, endpoint) in enumerate(replicas):
        Replica.objects.create(
            deployment=deployment, name=name, index=index, version_number=1,
            endpoint=endpoint, healthy=True, state="running",
        )  # fmt: skip
    return deployment


def _houses(rng: random.Random, n: int, *, area_factor: float = 1.0) -> list[list[float]]:
    return [
        [round(rng.gauss(1800, 400) * area_factor, 1), rng.randint(1, 5), rng.randint(1, 3)]
        for _ in range(n)
    ]


def _reference_csv(rng: random.Random, n: int = 600) -> bytes:
    lines = ["area,bedrooms,bathrooms"] + [",".join(map(str, r)) for r in _houses(rng, n)]
    return ("\n".join(lines) + "\n").encode()


def _upload_reference(client, deployment, data: bytes, name: str = "reference.csv"):
    return client.post(
        f"/api/v1/models/{deployment.model.name}/versions/1/drift-reference",
        {"file": SimpleUploadedFile(name, data, content_type="text/csv")},
    )


def _traffic(client, deployment, key: str, rng, *, area_factor: float = 1.0, calls: int = 40):
    for _ in range(calls):
        response = client.post(
            f"/api/v1/deployments/{deployment.name}/predict",
            data=json.dumps({"instances": _houses(rng, 10, area_factor=area_factor)}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key}",
        )
        assert response.status_code == HTTPStatus.OK, response.content


@pytest.fixture
def monitored(house, role_client, key_for):  # noqa: F811 - the fixture imported by name
    """Capture at 100% with bathrooms masked, a reference dataset, and a key to call with."""
    uploader = role_client("deployer")
    response = _upload_reference(uploader, house, _reference_csv(random.Random(1)))
    assert response.status_code == HTTPStatus.CREATED, response.content
    assert response.json()["rows"] == 600
    monitoring.capture_policy_set(
        deployment=house, actor=Actor.system(), percent=100, fields={"/2": "mask"}
    )
    return house, key_for(house)


def _score() -> None:
    tasks.drift_compute()  # the beat task, as beat runs it


def test_doubled_areas_raise_the_areas_and_the_predictions_drift(client, monitored, role_client):
    deployment, key = monitored
    _traffic(client, deployment, key, random.Random(2), area_factor=2.0)
    _score()
    scores = drift.latest_drift(deployment)
    assert scores["worst"][0] == "/0" and scores["worst"][1] > drift.PSI_MAJOR, scores
    assert scores[DriftSnapshot.PREDICTION] > drift.PSI_MAJOR  # prices follow the areas
    assert scores["/1"] < drift.PSI_MODERATE  # bedrooms were not shifted
    assert "/2" not in scores  # masked: nothing to compare
    area = DriftSnapshot.objects.get(deployment=deployment, feature="/0")
    assert area.ks > 0.5 and area.out_of_range_share > 0.2 and area.count == 400
    reference = DriftReference.objects.get(version=deployment.version)
    assert reference.source == "dataset" and reference.predictions["kind"] == "number"
    # The page's panel and the dashboard card show it, the worst feature first.
    viewer = role_client("viewer")
    page = viewer.get(f"/deployments/{deployment.name}/")
    body = page.content.decode()
    assert 'id="drift-table"' in body and body.index('data-feature="/0"') < body.index(
        'data-feature="/1"'
    )
    card = drift.drift_panel_context(None)["drift_cards"][0]
    assert card["deployment"] == deployment.name and card["feature"] == "/0"
    api = viewer.get(f"/api/v1/deployments/{deployment.name}/drift").json()
    assert api["worst"][0] == "/0" and api["features"][0]["feature"] == "/0"


def test_unshifted_traffic_does_not_drift(client, monitored):
    deployment, key = monitored
    _traffic(client, deployment, key, random.Random(3))
    _score()
    scores = drift.latest_drift(deployment)
    assert scores["worst"][1] < drift.PSI_MODERATE, scores
    assert scores[DriftSnapshot.PREDICTION] < drift.PSI_MODERATE, scores


def test_a_masked_field_never_reaches_the_database(client, monitored):
    deployment, key = monitored
    rng = random.Random(4)
    _traffic(client, deployment, key, rng, calls=3)
    with connection.cursor() as cursor:
        cursor.execute(
            f'SELECT payload::text FROM "{PredictionLog._meta.db_table}" '  # noqa: S608
            "WHERE deployment_name = %s",
            [deployment.name],
        )
        stored = [json.loads(text) for (text,) in cursor.fetchall()]
    assert len(stored) == 3
    for record in stored:
        assert record["policy"] == 1 and record["columns"] == ["/0", "/1", "/2"]
        assert {row[2] for row in record["inputs"]} == {capture.MASK}
        assert all(isinstance(row[0], float) for row in record["inputs"])
        assert len(record["outputs"]["predictions"]) == 10
        text = json.dumps(record)
        assert key not in text and key[:8] not in text  # no header, no key, ever


def test_reference_dataset_is_checked_against_the_schema_and_size_limited(
    house, role_client, settings
):
    uploader = role_client("deployer")
    bad = _upload_reference(uploader, house, b"area,bedrooms\n1,2\n")
    assert bad.status_code == HTTPStatus.BAD_REQUEST and "3 features" in bad.json()["error"]
    bad = _upload_reference(uploader, house, b"a,b,c\n1,2,x\n")
    assert bad.status_code == HTTPStatus.BAD_REQUEST and "expected a number" in bad.json()["error"]
    parquet = _upload_reference(uploader, house, b"PAR1 not really", name="ref.parquet")
    assert parquet.status_code == HTTPStatus.BAD_REQUEST
    assert "not valid Parquet" in parquet.json()["error"]
    # The same rows as CSV and as Parquet give the same profile (the house model's features
    # have no names: columns are taken in order, as a CSV's are).
    import pyarrow.csv
    import pyarrow.parquet

    text = _reference_csv(random.Random(7), n=50)
    assert _upload_reference(uploader, house, text).status_code == HTTPStatus.CREATED
    from_csv = DriftReference.objects.get(version__model=house.model).profile
    table = pyarrow.csv.read_csv(pyarrow.BufferReader(text))
    buffer = pyarrow.BufferOutputStream()
    pyarrow.parquet.write_table(table, buffer)
    blob = buffer.getvalue().to_pybytes()
    stored = _upload_reference(uploader, house, blob, name="ref.parquet")
    assert stored.status_code == HTTPStatus.CREATED, stored.content
    assert stored.json()["rows"] == 50
    assert DriftReference.objects.get(version__model=house.model).profile == from_csv
    buffer = pyarrow.BufferOutputStream()
    pyarrow.parquet.write_table(table.select(["area", "bedrooms"]), buffer)
    wrong = _upload_reference(uploader, house, buffer.getvalue().to_pybytes(), name="r.pq")
    assert wrong.status_code == HTTPStatus.BAD_REQUEST and "3 features" in wrong.json()["error"]
    DriftReference.objects.filter(version__model=house.model).delete()
    settings.PORTAL_DRIFT_REFERENCE_MAX_MB = 0
    big = _upload_reference(uploader, house, b"a,b,c\n1,2,3\n")
    assert big.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    viewer = role_client("viewer")
    denied = _upload_reference(viewer, house, b"a,b,c\n1,2,3\n")
    assert denied.status_code == HTTPStatus.FORBIDDEN
    assert not DriftReference.objects.filter(source="dataset").exists()
    # Without an upload the input example is the reference.
    got = viewer.get(f"/api/v1/models/{house.model.name}/versions/1/drift-reference")
    assert got.status_code == HTTPStatus.OK and got.json()["source"] == "input_example"
    settings.PORTAL_DRIFT_REFERENCE_MAX_MB = 1
    ok = _upload_reference(uploader, house, b"a,b,c\n1,2,3\n4,5,6\n")
    assert ok.status_code == HTTPStatus.CREATED and ok.json()["rows"] == 2
    assert AuditEvent.objects.filter(action="version.drift_reference_uploaded").count() == 3


def test_too_few_captured_rows_give_no_scores(client, monitored):
    deployment, key = monitored
    _traffic(client, deployment, key, random.Random(5), calls=2)  # 20 rows < 30
    assert monitoring.drift_compute(deployment=deployment) == []
    assert drift.latest_drift(deployment) == {}


def test_snapshots_older_than_the_drift_days_are_removed(monitored, settings):
    deployment, _ = monitored
    old = timezone.now() - timedelta(days=settings.PORTAL_DRIFT_DAYS + 1)
    DriftSnapshot.objects.create(
        deployment=deployment, version_number=1, window_start=old, window_end=old,
        feature="/0", kind="number", psi=0.5,
    )  # fmt: skip
    monitoring.capture_retention_run()
    assert not DriftSnapshot.objects.exists()
