"""Registry pages (issue 12): the input example as JSON with its columns; sorted lists."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest

from models_app.models import ModelVersion, RegisteredModel

pytestmark = pytest.mark.django_db


def _version(**extra) -> ModelVersion:
    model = RegisteredModel.objects.create(name="iris")
    return ModelVersion.objects.create(
        model=model,
        number=1,
        status="ready",
        artifact_sha256="a" * 64,
        artifact_size=1,
        **extra,
    )


def _pre(html: str, element_id: str):
    match = re.search(rf'<pre id="{element_id}">(.*?)</pre>', html, re.S)
    assert match, element_id
    return json.loads(unescape(match.group(1)))


def test_version_page_shows_the_input_example_as_json_objects_with_column_names(role_client):
    _version(
        input_example={"rows": [[5.1, 3.5], [6.2, None]], "columns": ["sepal length", "width"]},
        example_output={"predictions": ["setosa", "virginica"]},
    )
    html = role_client("viewer").get("/models/iris/versions/1/").content.decode()
    assert _pre(html, "example-input") == [
        {"sepal length": 5.1, "width": 3.5},
        {"sepal length": 6.2, "width": None},
    ]
    assert _pre(html, "example-output") == {"predictions": ["setosa", "virginica"]}
    assert "<code>sepal length</code>" in html
    assert "None" not in html.split('id="example-input"')[1].split("</pre>")[0]  # not a repr


def test_example_without_columns_is_json_rows_and_uses_the_schema_columns(role_client):
    _version(input_example={"rows": [[1, 2]], "columns": None}, schema={"columns": ["a", "b"]})
    html = role_client("viewer").get("/models/iris/versions/1/").content.decode()
    assert _pre(html, "example-input") == [{"a": 1, "b": 2}]


def test_example_rows_that_do_not_fit_the_columns_stay_lists(role_client):
    _version(input_example={"rows": [[1, 2, 3]], "columns": ["a", "b"]})
    html = role_client("viewer").get("/models/iris/versions/1/").content.decode()
    assert _pre(html, "example-input") == [[1, 2, 3]]


def test_version_page_has_breadcrumbs_and_dated_times(role_client):
    _version()
    html = role_client("viewer").get("/models/iris/versions/1/").content.decode()
    assert '<a href="/models/">Models</a> › <a href="/models/iris/">iris</a>' in html
    assert '<span class="tz">UTC</span>' in html
