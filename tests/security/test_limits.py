"""Abuse limits and bounded parsing (issue 11, items 6, 7 and 9), against real services.

Login and basic-auth failures lock out per account and per address (django-axes); invalid API
keys are throttled per address and leave no prediction-log rows; a key's rate limit is capped;
anonymous /readyz tells nothing but ready or not; deep or huge JSON is a JSON 4xx on every
endpoint and lane; validation refuses to run below the minimum sandbox isolation.
"""

from __future__ import annotations

import base64
import json
from http import HTTPStatus

import pytest
from django.urls import reverse

from portal.models import AuditEvent

pytestmark = [pytest.mark.security, pytest.mark.django_db]
PASSWORD = "correct-horse-battery"  # tests.factories.UserFactory's
OUTSIDE = "203.0.113.9"  # an address not in PORTAL_METRICS_ALLOW


def _basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


# ------------------------------------------------------------------------ login throttling


def test_login_form_locks_the_account_after_the_failure_limit(client, make_user, settings):
    make_user("viewer", username="alice")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        bad = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
        assert bad.status_code in (HTTPStatus.OK, HTTPStatus.TOO_MANY_REQUESTS)
    # The right password, from another address: the account itself is locked.
    right = client.post(
        reverse("login"), {"username": "alice", "password": PASSWORD}, REMOTE_ADDR=OUTSIDE
    )
    assert right.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert "_auth_user_id" not in client.session
    locked = AuditEvent.objects.filter(action="auth.locked_out").order_by("id").first()
    assert locked.target_name == "alice" and locked.outcome == AuditEvent.Outcome.DENIED


def test_login_form_locks_the_address_whatever_the_account(client, make_user, settings):
    make_user("viewer", username="bob")
    for i in range(settings.AXES_FAILURE_LIMIT):  # password spraying: one try per name
        client.post(reverse("login"), {"username": f"user{i}", "password": "wrong"})
    right = client.post(reverse("login"), {"username": "bob", "password": PASSWORD})
    assert right.status_code == HTTPStatus.TOO_MANY_REQUESTS
    # Another address is not affected: bob may log in from there.
    elsewhere = client.post(
        reverse("login"), {"username": "bob", "password": PASSWORD}, REMOTE_ADDR=OUTSIDE
    )
    assert elsewhere.status_code == HTTPStatus.FOUND


def test_failures_below_the_limit_do_not_lock(client, make_user, settings):
    make_user("viewer", username="carol")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post(reverse("login"), {"username": "carol", "password": "wrong"})
    right = client.post(reverse("login"), {"username": "carol", "password": PASSWORD})
    assert right.status_code == HTTPStatus.FOUND


def test_basic_auth_failures_lock_the_account_with_a_json_429(client, make_user, settings):
    make_user("viewer", username="dave")
    url = reverse("api-model-list")
    assert client.get(url, **_basic("dave", PASSWORD)).status_code == HTTPStatus.OK
    for _ in range(settings.AXES_FAILURE_LIMIT):
        bad = client.get(url, **_basic("dave", "wrong"))
        assert bad.status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN, 429)
    right = client.get(url, REMOTE_ADDR=OUTSIDE, **_basic("dave", PASSWORD))
    assert right.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert right["Content-Type"] == "application/json"
    assert "too many failed logins" in right.json()["error"]
    assert AuditEvent.objects.filter(action="auth.locked_out", target_name="dave").exists()


def test_basic_auth_failures_lock_the_address(client, make_user, settings):
    make_user("viewer", username="erin")
    url = reverse("api-model-list")
    for i in range(settings.AXES_FAILURE_LIMIT):
        client.get(url, **_basic(f"nobody{i}", "wrong"))
    assert client.get(url, **_basic("erin", PASSWORD)).status_code == 429
    assert client.get(url, REMOTE_ADDR=OUTSIDE, **_basic("erin", PASSWORD)).status_code == 200


# ------------------------------------------------------------------------------- helpers


def _predict(
    client,
    body: bytes | str,
    key: str | None,
    path: str = "/api/v1/deployments/lim-dep/predict",
    **extra,
):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    return client.post(path, data=body, content_type="application/json", **headers, **extra)


def _invalid_key_count(status: int) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "portal_prediction_invalid_keys_total", {"status": str(status)}
    )
    return value or 0.0


# ---------------------------------------------------------------------- invalid API keys


def test_invalid_keys_are_throttled_per_address_and_leave_no_log_rows(
    lane, deployment, raw_key, settings, forget_bad_keys
):
    from deployments_app.models import PredictionLog

    settings.PORTAL_INVALID_KEY_LIMIT = 3
    before_401, before_429 = _invalid_key_count(401), _invalid_key_count(429)
    for i in range(3):
        guess = _predict(
            lane,
            b'{"features": [1]}',
            f"mp_guess{i}_secret",
            path=f"/api/v1/deployments/spam-{i}/predict",
        )
        assert guess.status_code == HTTPStatus.UNAUTHORIZED, guess.content
        assert guess["Content-Type"] == "application/json"
    over = _predict(lane, b'{"features": [1]}', "mp_guess9_secret")
    assert over.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert 1 <= int(over["Retry-After"]) <= 60
    assert "invalid API keys" in over.json()["error"]
    # Now even a valid key from that address waits: guesses get no verdict until the minute ends.
    assert _predict(lane, b'{"features": [1]}', raw_key).status_code == 429
    # Nothing the guesser named reached the log; the metric counted every refusal.
    assert not PredictionLog.objects.exists()
    assert _invalid_key_count(401) - before_401 == 3
    assert _invalid_key_count(429) - before_429 == 2


def test_calls_without_credentials_leave_no_log_rows(client, deployment, forget_bad_keys):
    from deployments_app.models import PredictionLog

    before = _invalid_key_count(401)
    for i in range(3):
        anonymous = _predict(client, b"{}", None, path=f"/api/v1/deployments/name-{i}/predict")
        assert anonymous.status_code == HTTPStatus.UNAUTHORIZED
        assert "authentication required" in anonymous.json()["error"]
    assert not PredictionLog.objects.exists()
    assert _invalid_key_count(401) - before == 3


def test_other_addresses_are_not_throttled_by_one_guesser(
    lane, deployment, raw_key, settings, forget_bad_keys
):
    client = lane
    settings.PORTAL_INVALID_KEY_LIMIT = 2
    for i in range(4):
        _predict(client, b"{}", f"mp_g{i}_x", REMOTE_ADDR="198.51.100.7")
    assert _predict(client, b"{}", "mp_g_x", REMOTE_ADDR="198.51.100.7").status_code == 429
    assert _predict(client, b"{}", "mp_g_x", REMOTE_ADDR="198.51.100.8").status_code == 401
    good = _predict(client, b'{"features": [1]}', raw_key, REMOTE_ADDR="198.51.100.8")
    assert good.status_code == HTTPStatus.SERVICE_UNAVAILABLE  # the key works: deployment stopped


# ------------------------------------------------------------------------ rate-limit cap


def _create_key(client, rate: int | None):
    body = {"name": "k", "deployments": ["lim-dep"]}
    if rate is not None:
        body["rate_limit_per_minute"] = rate
    return client.post(reverse("api-key-list"), body, format="json")


def test_a_key_rate_limit_above_the_cap_needs_an_admin(api_client, deployment, settings):
    settings.PORTAL_MAX_KEY_RATE_LIMIT = 100
    deployer = api_client("deployer")
    refused = _create_key(deployer, 101)
    assert refused.status_code == HTTPStatus.FORBIDDEN
    assert "PORTAL_MAX_KEY_RATE_LIMIT" in refused.json()["error"]
    assert _create_key(deployer, 100).status_code == HTTPStatus.CREATED
    default = _create_key(deployer, None)
    assert default.status_code == HTTPStatus.CREATED
    assert default.json()["rate_limit_per_minute"] == 100  # the default, within the cap
    admin = api_client("admin")
    above = _create_key(admin, 5000)
    assert above.status_code == HTTPStatus.CREATED
    assert above.json()["rate_limit_per_minute"] == 5000
    created = AuditEvent.objects.filter(action="api_key.created").order_by("id")
    assert [e.details["above_cap"] for e in created] == [False, False, True]


def test_the_rate_limit_cap_also_binds_the_service(deployment, make_user, settings):
    from deployments_app.predict import keys
    from portal.audit import Actor
    from portal.errors import PermissionDeniedError

    settings.PORTAL_MAX_KEY_RATE_LIMIT = 10
    with pytest.raises(PermissionDeniedError):
        keys.api_key_create(
            user=make_user("deployer"),
            actor=Actor.system(),
            name="k",
            deployment_names=["lim-dep"],
            rate_limit_per_minute=11,
        )
    assert not AuditEvent.objects.filter(action="api_key.created").exists()


# ------------------------------------------------------------------------------- /readyz


def test_anonymous_readyz_says_ready_and_nothing_else(client):
    response = client.get("/readyz", REMOTE_ADDR=OUTSIDE)
    assert response.status_code == HTTPStatus.OK
    assert response.json() == {"status": "ready"}


def test_anonymous_readyz_not_ready_names_no_check_path_or_error(client, settings, tmp_path):
    settings.PORTAL_ARTIFACT_DIR = tmp_path / "file-not-dir"
    (tmp_path / "file-not-dir").write_text("x")  # artifact storage check fails
    response = client.get("/readyz", REMOTE_ADDR=OUTSIDE)
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json() == {"status": "not ready"}
    assert str(tmp_path) not in response.content.decode()
    # From an allowed address the same call names the failing check.
    inside = client.get("/readyz", REMOTE_ADDR="127.0.0.1").json()
    assert inside["checks"]["artifact_storage"]["ok"] is False


@pytest.mark.parametrize(
    ("role", "sees"), [("viewer", False), ("deployer", False), ("admin", True)]
)
def test_readyz_details_from_outside_are_for_admins_only(role_client, role, sees):
    body = role_client(role).get("/readyz", REMOTE_ADDR=OUTSIDE).json()
    assert ("checks" in body) is sees


# ------------------------------------------------------------ sandbox minimum isolation


@pytest.fixture
def weak_host(monkeypatch, tmp_path):
    """This host as one without util-linux: the real detection, run with a PATH that holds
    none of unshare, setpriv and chroot, reports isolation 'none'. Detected again afterwards."""
    from models_app.validation import isolation, sandbox

    with monkeypatch.context() as patch:
        patch.setenv("PATH", str(tmp_path))
        patch.setattr(isolation, "SYSTEM_BIN_DIRS", ())  # nor in the system folders
        detected = sandbox.isolation(refresh=True)
    assert detected["mode"] == "none"
    yield detected
    sandbox.isolation(refresh=True)


def test_validation_below_the_minimum_isolation_fails_with_its_reason(
    weak_host, fixture_copy, manifest, settings, role_client
):
    from models_app import services
    from models_app.models import ModelVersion
    from portal.audit import Actor

    assert settings.PORTAL_SANDBOX_MIN_ISOLATION == "namespaces"  # the default
    name = "house_price_linreg.pkl"
    client = role_client("deployer")
    version, _ = services.model_version_upload(
        model_name="weak-host",
        chunks=[fixture_copy(name).read_bytes()],
        actor=Actor.system(),
        user=client.user,
        filename=name,
        example_text=json.dumps(manifest[name]["input_example"]),
    )
    services.model_version_validate(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.INVALID
    reason = version.rejection_reason
    assert "offers only 'none' isolation" in reason
    assert "PORTAL_SANDBOX_MIN_ISOLATION requires 'namespaces'" in reason
    assert "unshare not found" in reason
    load = next(s for s in version.report["steps"] if s["key"] == "load")
    assert load["ok"] is False and "not loaded" in load["summary"]
    assert "inspection" not in version.report  # the sandbox never ran
    page = client.get(reverse("version-detail", args=["weak-host", version.number]))
    assert "PORTAL_SANDBOX_MIN_ISOLATION" in page.content.decode()
    invalid = AuditEvent.objects.get(action="model_version.invalid")
    assert "PORTAL_SANDBOX_MIN_ISOLATION" in invalid.details["reason"]


def test_userns_host_is_refused_by_default_and_accepted_when_allowed(
    weak_host, monkeypatch, settings
):
    from models_app.validation import pipeline

    userns = {**weak_host, "mode": "userns", "notes": ["not root: no mount namespace"]}
    monkeypatch.setattr(pipeline.sandbox, "isolation", lambda refresh=False: userns)
    assert "offers only 'userns'" in pipeline.isolation_shortfall()
    settings.PORTAL_SANDBOX_MIN_ISOLATION = "userns"
    assert pipeline.isolation_shortfall() == ""


def test_an_operator_may_accept_weaker_isolation_explicitly(
    weak_host, fixture_copy, manifest, settings
):
    from models_app.validation.pipeline import validate_artifact

    settings.PORTAL_SANDBOX_MIN_ISOLATION = "none"
    name = "house_price_linreg.pkl"
    outcome = validate_artifact(
        path=fixture_copy(name), example_rows=manifest[name]["input_example"]
    )
    assert outcome.ok, outcome.reason
    assert outcome.report["sandbox"]["isolation"]["mode"] == "none"
