"""Schema-driven fuzzing: every API operation, any input schemathesis can think of, no 500.

The OpenAPI schema is the portal's own (drf-spectacular); requests go through the real WSGI
application as an admin (who may reach every operation), against the test database.
"""

from __future__ import annotations

import base64

import pytest
import schemathesis
from django.contrib.auth.models import Group
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from tests.factories import PASSWORD, UserFactory

pytestmark = [pytest.mark.security, pytest.mark.slow]
EXAMPLES_PER_OPERATION = 30


@pytest.fixture
def wsgi_app(db):
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    from portal.wsgi import application

    # As Django's test client does: the WSGI handler must not close the test's connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield application
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def test_no_api_operation_answers_500(wsgi_app):
    user = UserFactory(username="fuzz-admin")
    user.groups.add(Group.objects.get_or_create(name="admin")[0])
    auth = {
        "Authorization": "Basic " + base64.b64encode(f"fuzz-admin:{PASSWORD}".encode()).decode()
    }
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", wsgi_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # the schema really lists the API
    seen: list[str] = []
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        seen.append(label)
        _fuzz(operation, label, auth)
    assert any("predict" in s for s in seen)


def _fuzz(operation, label: str, auth: dict[str, str]) -> None:
    """Hypothesis runs this operation's generated cases; the first 500 fails the test."""

    @given(case=operation.as_strategy())
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        response = case.call(headers=auth)
        assert response.status_code < 500 or response.status_code == 503, (
            f"{label} -> {response.status_code} for {case.path_parameters} "
            f"{case.query} {str(case.body)[:200]}: {response.text[:300]}"
        )

    run()
