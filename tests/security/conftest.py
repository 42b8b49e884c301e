"""Fixtures of the abuse-limit and bounded-parsing tests: both prediction lanes, a
deployment whose calls are read but not forwarded, a key for it."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    """The asynchronous lane reads from other threads and writes on its own connection, as
    in production: its cases need committed rows (a transactional test). Marked at
    collection, where the test's own marker beats the module's."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("lane") == "asgi-lane":
            item.add_marker(pytest.mark.django_db(transaction=True))


@pytest.fixture(params=["django", "asgi-lane"])
def lane(request):
    """Every prediction case through both lanes, as in test_predict: Django's stack (the
    blocking driver) and the asynchronous lane (see pytest_collection_modifyitems)."""
    from django.test import Client

    from tests.conftest import AsgiLaneClient

    if request.param == "django":
        yield Client()
        return
    request.getfixturevalue("asgi_lane_connections")
    client = AsgiLaneClient()
    yield client
    client.close()


@pytest.fixture
def deployment(db):
    """A stopped deployment: calls to it are authenticated and their bodies read, then 503."""
    from deployments_app.models import Deployment
    from models_app.models import ModelVersion, RegisteredModel

    model = RegisteredModel.objects.create(name="lim-model")
    version = ModelVersion.objects.create(
        model=model, number=1, status="ready", artifact_sha256="0" * 64, artifact_size=1
    )
    return Deployment.objects.create(
        name="lim-dep", model=model, version=version, runtime="process", state="stopped"
    )


@pytest.fixture
def raw_key(deployment, make_user):
    from deployments_app.predict import keys
    from portal.audit import Actor

    _, raw = keys.api_key_create(
        user=make_user("deployer"),
        actor=Actor.system(),
        name="k",
        deployment_names=[deployment.name],
    )
    return raw


@pytest.fixture
def forget_bad_keys(settings):
    """Invalid-key counts live in the shared Redis for a minute: drop this test's afterwards,
    so no other test (in this run) starts over the limit."""
    from deployments_app.predict import keys

    keys._blocked.clear()
    yield
    keys._blocked.clear()
    client = keys._redis()
    if client is not None:
        for name in client.scan_iter(f"portal:{settings.PORTAL_INSTANCE}:badkey:*"):
            client.delete(name)
