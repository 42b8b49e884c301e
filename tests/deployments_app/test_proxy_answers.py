"""What a replica answers is hostile too: it runs uploaded code (issue 11, bounded parsing)."""

from __future__ import annotations

import pytest

from deployments_app.predict.proxy import Forwarded, UpstreamError, interpret

pytestmark = pytest.mark.security
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("data", [b"not json", DEEP, b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_a_replica_answer_that_is_not_a_json_object_is_a_502(data):
    with pytest.raises(UpstreamError) as caught:
        interpret(200, data, "replica-0", 1.0)
    assert caught.value.status == 502


def test_a_json_object_is_forwarded():
    outcome = interpret(200, b'{"predictions": [1]}', "replica-0", 1.0)
    assert isinstance(outcome, Forwarded) and outcome.body == {"predictions": [1]}


@pytest.mark.parametrize("data", [DEEP[:2000], b"[1]", b"oops"])
def test_an_error_answer_of_any_shape_keeps_its_status(data):
    with pytest.raises(UpstreamError) as caught:
        interpret(500, data, "replica-0", 1.0)
    assert caught.value.status == 502
    with pytest.raises(UpstreamError) as caught:
        interpret(400, data, "replica-0", 1.0)
    assert caught.value.status == 422
