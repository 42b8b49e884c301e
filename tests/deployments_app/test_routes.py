"""The prediction routes: one table for the URL conf and the asynchronous lane, and all of
them in the OpenAPI schema."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern

from deployments_app.predict import protocols, routes
from deployments_app.predict import urls as predict_urls


def _openapi_path(pattern: URLPattern) -> str:
    route = str(pattern.pattern).removeprefix("^").removesuffix("$")
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route)
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


@pytest.mark.django_db
def test_every_prediction_route_is_in_the_openapi_schema(admin_client):
    schema = admin_client.get("/api/schema/?format=json").json()
    wanted = {
        _openapi_path(p) for p in predict_urls.urlpatterns if p.name != "metrics"
    }  # /metrics is Prometheus text, for scrapers
    missing = sorted(wanted - set(schema["paths"]))
    assert not missing, f"add to deployments_app/predict/openapi.py: {missing}"
    assert len(wanted) == 15


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/api/v1/deployments/house/predict", (protocols.PORTAL, "house", None)),
        ("/api/v1/deployments/house/versions/12/predict", (protocols.PORTAL, "house", 12)),
        ("/api/v1/deployments/a.b_c-1/invocations", (protocols.MLFLOW, "a.b_c-1", None)),
        ("/v1/models/house:predict", (protocols.KSERVE_V1, "house", None)),
        ("/v2/models/house/infer", (protocols.V2, "house", None)),
        ("/v2/models/house/versions/3/infer", (protocols.V2, "house", 3)),
        ("/v2/models/house/versions/x/infer", None),
        ("/v2/models/house", None),  # a read: Django's
        ("/api/v1/deployments/house/predict/", None),
        ("/v1/models/house:explain", None),
    ],
)
def test_the_lane_routes_what_the_url_conf_routes(path, expected, client):
    assert routes.match(path) == expected
    if expected is not None:  # Django resolves the same path to the same protocol's view
        from django.urls import resolve

        match = resolve(path)
        assert match.func.protocol is expected[0]
        assert match.kwargs["name"] == expected[1]
