"""Bounded parsing (issue 11, item 7): deep or huge JSON anywhere is a JSON 4xx, never a 500.

Python's json recurses per nesting level: 100,000 `[` raised RecursionError (a 500 with a
traceback) on every path that parsed request JSON. Each test sends such documents where a
caller can put JSON: prediction bodies on both lanes (REST and V2), every DRF endpoint
that takes a body, and the upload fields (metrics, input example, tags).
"""

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import get_resolver, reverse

from portal import jsonlimits

pytestmark = [pytest.mark.security, pytest.mark.django_db]

DEEP = 100_000
HOSTILE = {
    "open arrays": b"[" * DEEP,
    "balanced arrays": b"[" * DEEP + b"]" * DEEP,
    "objects": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "huge integer": b'{"features": [' + b"9" * 5000 + b"]}",
    "one level too deep": b"[" * 33 + b"]" * 33,
}


def _is_json_error(response, status: int) -> str:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    return response.json()["error"]


# ------------------------------------------------------------------------ the pre-scan


def _depth(value) -> int:
    """How deep json.loads nested it: the reference the pre-scan must agree with."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@pytest.mark.parametrize(
    "text",
    [
        b"1",
        b"[]",
        b'{"a": [1, {"b": "]]]]{{{{"}]}',
        b'["\\"[[", "\\\\", "\\\\\\"]"]',  # escaped quotes and backslashes in strings
        b'[[1], [2, [3]], {"x": [[]]}]',
        b'{"a": {}, "b": [[[[{}]]]], "c": "{"}',
    ],
)
def test_depth_prescan_agrees_with_the_decoder(text):
    import json

    depth = _depth(json.loads(text))
    assert not jsonlimits.depth_exceeds(text, depth)
    if depth:
        assert jsonlimits.depth_exceeds(text, depth - 1)


def test_depth_prescan_agrees_with_the_decoder_on_random_documents():
    import json
    import random

    rng = random.Random(11)  # noqa: S311 - reproducible test data, not secrets
    alphabet = ['"', "\\", "[", "]", "{", "}", "a", ",", ":", " ", "\u00e9"]

    def make(level: int):
        roll = rng.random()
        if level > 12 or roll < 0.3:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        if roll < 0.65:
            return [make(level + 1) for _ in range(rng.randint(0, 3))]
        return {make(99): make(level + 1) for _ in range(rng.randint(0, 3))}

    for _ in range(500):
        text = json.dumps(make(0), ensure_ascii=rng.random() < 0.5).encode()
        depth = _depth(json.loads(text))
        assert not jsonlimits.depth_exceeds(text, depth), text
        if depth:
            assert jsonlimits.depth_exceeds(text, depth - 1), text


def test_depth_prescan_is_linear_on_hostile_strings():
    import time

    for text in (b'"' + b'\\"' * 1_000_000, b'"' * 2_000_000, b'"["' * 700_000):
        started = time.perf_counter()
        jsonlimits.depth_exceeds(text, 32)
        assert time.perf_counter() - started < 1.0


# ------------------------------------------------------------------------ prediction lanes


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize(
    "path", ["/api/v1/deployments/lim-dep/predict", "/v2/models/lim-dep/infer"]
)
def test_hostile_prediction_bodies_get_400_and_a_log_row(lane, deployment, raw_key, name, path):
    from deployments_app.models import PredictionLog

    response = lane.post(
        path,
        data=HOSTILE[name],
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw_key}",
        HTTP_X_REQUEST_ID=f"hostile-{len(name)}",
    )
    error = _is_json_error(response, HTTPStatus.BAD_REQUEST)
    assert "nested deeper" in error or "malformed JSON" in error
    row = PredictionLog.objects.get(request_id=f"hostile-{len(name)}")
    assert row.status_code == 400 and row.deployment_name == "lim-dep"
    assert row.input_bytes == len(HOSTILE[name])


def test_a_prediction_body_over_the_limit_gets_413_and_a_log_row(
    lane, deployment, raw_key, settings
):
    from deployments_app.models import PredictionLog

    settings.PORTAL_PREDICT_MAX_BODY_BYTES = 64 * 1024
    body = b"[" * (64 * 1024 + 1)
    response = lane.post(
        "/api/v1/deployments/lim-dep/predict",
        data=body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw_key}",
        HTTP_X_REQUEST_ID="too-big-body",
    )
    _is_json_error(response, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    assert PredictionLog.objects.get(request_id="too-big-body").status_code == 413


# ------------------------------------------------------------------------ DRF bodies


def _api_views_with_bodies(user_id: int = 1) -> list[tuple[str, str, str]]:
    """(url, method, view name) for every api/v1 view that takes a body."""
    kwargs = {"name": None, "number": 1, "alias": "prod", "prefix": "nope", "user_id": user_id}
    found = []

    def walk(patterns, prefix=""):
        for p in patterns:
            if hasattr(p, "url_patterns"):
                walk(p.url_patterns, prefix + str(p.pattern))
                continue
            cls = getattr(p.callback, "cls", None)
            if cls is None or not (prefix + str(p.pattern)).startswith("api/v1/"):
                continue
            for method in ("post", "put", "patch"):
                if hasattr(cls, method):
                    found.append((p, method, cls.__name__))

    walk(get_resolver().url_patterns)
    out = []
    for pattern, method, view in found:
        names = pattern.pattern.converters.keys()
        args = {k: kwargs[k] for k in names}
        if "name" in args:
            args["name"] = "lim-dep" if "Deployment" in view else "lim-model"
        out.append((reverse(pattern.name, kwargs=args), method, view))
    return out


def test_every_api_body_endpoint_is_found():
    views = {view for _, _, view in _api_views_with_bodies()}
    assert {"ApiKeyListApi", "DeploymentListApi", "DeploymentActionApi", "AliasApi"} <= views


@pytest.mark.parametrize(
    "name", ["open arrays", "balanced arrays", "objects", "one level too deep"]
)
def test_every_api_endpoint_answers_deep_json_with_400(api_client, deployment, name):
    admin = api_client("admin")
    for url, method, view in _api_views_with_bodies(admin.user.pk):
        response = getattr(admin, method)(url, data=HOSTILE[name], content_type="application/json")
        if view in ("VersionListApi", "VersionDriftReferenceApi"):  # uploads: multipart only
            _is_json_error(response, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
            continue
        error = _is_json_error(response, HTTPStatus.BAD_REQUEST)
        assert "nested deeper" in error, (view, error)


def test_an_api_body_over_the_limit_gets_413(api_client, deployment, settings):
    settings.PORTAL_JSON_MAX_BYTES = 1000
    admin = api_client("admin")
    body = b'{"name": "k", "deployments": ["lim-dep"], "pad": "' + b"x" * 1000 + b'"}'
    response = admin.post(reverse("api-key-list"), data=body, content_type="application/json")
    assert "larger than 1000 bytes" in _is_json_error(response, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    assert (
        admin.post(
            reverse("api-key-list"), data=b"[1, 2", content_type="application/json"
        ).status_code
        == 400
    )


def test_form_encoded_api_bodies_past_djangos_limits_are_json_errors(api_client, settings):
    admin = api_client("admin")
    url = reverse("api-key-list")
    form = "application/x-www-form-urlencoded"
    many = admin.post(url, data="&".join(f"f{i}=1" for i in range(2000)), content_type=form)
    _is_json_error(many, HTTPStatus.BAD_REQUEST)  # DATA_UPLOAD_MAX_NUMBER_FIELDS
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    big = admin.post(url, data="name=" + "x" * 20_000, content_type=form)
    _is_json_error(big, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)


# ------------------------------------------------------------------------ upload fields

FIELDS = {
    "metrics": "[" * DEEP,
    "input_example": "[" * DEEP + "]" * DEEP,
}


def _upload(client, **fields):
    data = {"file": SimpleUploadedFile("m.pkl", b"\x80\x04N."), **fields}
    return client.post(
        reverse("api-version-list", kwargs={"name": "lim-model"}), data, format="multipart"
    )


@pytest.mark.parametrize(("field", "value"), list(FIELDS.items()))
def test_api_upload_fields_with_deep_json_get_400(api_client, deployment, field, value):
    from models_app.models import ModelVersion

    response = _upload(api_client("deployer"), **{field: value})
    _is_json_error(response, HTTPStatus.BAD_REQUEST)
    assert "nested deeper" in str(response.json()["fields"][field])
    assert ModelVersion.objects.count() == 1  # the fixture's: nothing was stored


def test_api_upload_fields_that_are_too_large_are_refused(api_client, deployment, settings):
    settings.PORTAL_JSON_MAX_BYTES = 10_000
    client = api_client("deployer")
    big = _upload(client, metrics='{"a": "' + "x" * 10_000 + '"}')
    assert "larger than 10000 bytes" in str(_is_json_error(big, 400) and big.json()["fields"])
    tags = _upload(client, tags="t," * 1000)
    assert "tags" in _is_json_error(tags, 400) + str(tags.json().get("fields"))
    # Past Django's own limit on form fields (DATA_UPLOAD_MAX_MEMORY_SIZE): still JSON.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50_000
    huge = _upload(client, description="x" * 60_000)
    _is_json_error(huge, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)


@pytest.mark.parametrize(("field", "value"), list(FIELDS.items()))
def test_upload_page_fields_with_deep_json_are_form_errors(role_client, deployment, field, value):
    client = role_client("deployer")
    data = {
        "model_name": "lim-model",
        "file": SimpleUploadedFile("m.pkl", b"\x80\x04N."),
        field: value,
    }
    as_json = client.post(reverse("model-upload"), data, HTTP_ACCEPT="application/json")
    _is_json_error_fields = as_json.json()["errors"]
    assert as_json.status_code == HTTPStatus.BAD_REQUEST
    assert "nested deeper" in str(_is_json_error_fields)
    data["file"] = SimpleUploadedFile("m.pkl", b"\x80\x04N.")
    page = client.post(reverse("model-upload"), data)
    assert page.status_code == HTTPStatus.OK and "nested deeper" in page.content.decode()
