"""The authorization matrix, generated from the URL configuration.

Every URL pattern must have a rule below, or the suite fails: a new endpoint cannot land
without someone deciding who may call it. Each (pattern, method, principal) is requested for
real; "denied" means 401/403, a redirect to the login page, or - for prediction endpoints
called with a key scoped elsewhere - 404.
"""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from deployments_app.models import Deployment
from deployments_app.predict import keys
from models_app.models import ModelVersion, RegisteredModel
from models_app.storage import artifact_store
from portal.audit import Actor
from tests.factories import UserFactory

pytestmark = [pytest.mark.security, pytest.mark.django_db]

PUBLIC, ANY_USER = "public", "any-user"
VIEW = {"viewer", "deployer", "approver", "admin"}
DEPLOY = UPLOAD = PREDICT = {"deployer", "admin"}
APPROVE = {"approver", "admin"}
AUDIT = ADMIN = {"admin"}
ARCHIVE = {"deployer", "admin"}
PRINCIPALS = ["anonymous", "viewer", "deployer", "approver", "admin", "key-elsewhere"]

# name -> {method: who may}; kwargs fill the pattern's parameters.
RULES: dict[str, dict[str, object]] = {
    "home": {"GET": VIEW},
    "healthz": {"GET": PUBLIC},
    "readyz": {"GET": PUBLIC},
    "login": {"GET": PUBLIC},
    "logout": {"POST": ANY_USER},
    "dashboard-data": {"GET": VIEW},
    "metrics-series": {"GET": VIEW},
    "audit-list": {"GET": AUDIT},
    "audit-export": {"GET": AUDIT},
    "audit-verify": {"POST": AUDIT},
    "api-schema": {"GET": PUBLIC},
    "api-docs": {"GET": PUBLIC},
    "predict": {"POST": PREDICT},
    "predict-version": {"POST": PREDICT},
    "mlflow-invocations": {"POST": PREDICT},
    "mlflow-ping": {"GET": VIEW},
    "v1-predict": {"POST": PREDICT},
    "v1-model": {"GET": VIEW},
    "v2-server": {"GET": PUBLIC},
    "v2-ready": {"GET": PUBLIC},
    "v2-live": {"GET": PUBLIC},
    "v2-model": {"GET": VIEW},
    "v2-model-ready": {"GET": VIEW},
    "v2-model-version": {"GET": VIEW},
    "v2-model-version-ready": {"GET": VIEW},
    "v2-infer": {"POST": PREDICT},
    "v2-infer-version": {"POST": PREDICT},
    "metrics": {"GET": PUBLIC},  # from PORTAL_METRICS_ALLOW addresses (loopback here)
    "model-list": {"GET": VIEW},
    "model-upload": {"GET": UPLOAD, "POST": UPLOAD},
    "model-detail": {"GET": VIEW},
    "version-detail": {"GET": VIEW},
    "version-download": {"GET": VIEW},
    "version-approve": {"POST": APPROVE},
    "alias-set": {"POST": DEPLOY},
    "model-archive": {"POST": ARCHIVE},
    "model-delete": {"POST": ADMIN},
    "version-archive": {"POST": ARCHIVE},
    "version-delete": {"POST": ADMIN},
    "user-list": {"GET": ADMIN, "POST": ADMIN},
    "user-roles": {"POST": ADMIN},
    "user-active": {"POST": ADMIN},
    "user-password": {"POST": ADMIN},
    "api-user-list": {"GET": ADMIN, "POST": ADMIN},
    "api-user-detail": {"GET": ADMIN, "PATCH": ADMIN},
    "api-token-list": {"GET": VIEW, "POST": VIEW},
    "api-token-detail": {"DELETE": VIEW},
    "token-list": {"GET": VIEW, "POST": VIEW},
    "token-revoke": {"POST": VIEW},
    "key-list": {"GET": PREDICT, "POST": PREDICT},
    "key-revoke": {"POST": PREDICT},
    "deployment-list": {"GET": VIEW},
    "deployment-detail": {"GET": VIEW},
    "deployment-status": {"GET": VIEW},
    "deployment-action": {"POST": DEPLOY},
    "deployment-create": {"POST": DEPLOY},
    "deployment-rollout": {"POST": DEPLOY},
    "deployment-rollout-promote": {"POST": DEPLOY},
    "deployment-rollout-abort": {"POST": DEPLOY},
    "deployment-shadow": {"POST": DEPLOY},
    "api-model-list": {"GET": VIEW},
    "api-model-detail": {"GET": VIEW, "DELETE": ADMIN},
    "api-model-archive": {"POST": ARCHIVE},
    "api-version-list": {"GET": VIEW, "POST": UPLOAD},
    "api-version-detail": {"GET": VIEW, "DELETE": ADMIN},
    "api-version-archive": {"POST": ARCHIVE},
    "api-version-download": {"GET": VIEW},
    "api-version-bundle": {"GET": VIEW},
    "api-version-approval": {"POST": APPROVE},
    "api-alias": {"PUT": DEPLOY, "DELETE": DEPLOY},
    "api-key-list": {"GET": PREDICT, "POST": PREDICT},
    "api-key-detail": {"DELETE": PREDICT},
    "api-deployment-list": {"GET": VIEW, "POST": DEPLOY},
    "api-deployment-detail": {"GET": VIEW, "DELETE": DEPLOY},
    "api-deployment-actions": {"POST": DEPLOY},
    "api-deployment-builds": {"GET": VIEW},
    "api-deployment-events": {"GET": VIEW},
    "api-deployment-rollout": {"GET": VIEW, "PUT": DEPLOY},
    "api-deployment-rollout-promote": {"POST": DEPLOY},
    "api-deployment-rollout-abort": {"POST": DEPLOY},
    "api-deployment-shadow": {"GET": VIEW, "PUT": DEPLOY, "DELETE": DEPLOY},
    # monitoring (issue 19): reading is for viewers; changing, and reading captured payloads,
    # is for deployers
    "alert-list": {"GET": VIEW},
    "api-alert-list": {"GET": VIEW},
    "api-deployment-alert-rules": {"GET": VIEW, "POST": DEPLOY, "DELETE": DEPLOY},
    "api-deployment-alert-webhook": {"GET": VIEW, "PUT": DEPLOY, "DELETE": DEPLOY},
    "deployment-alert-rules": {"POST": DEPLOY},
    "deployment-alert-rule-delete": {"POST": DEPLOY},
    "deployment-alert-webhook": {"POST": DEPLOY},
    "api-deployment-capture": {"GET": VIEW, "PUT": DEPLOY},
    "api-deployment-capture-export": {"GET": DEPLOY},
    "deployment-capture": {"POST": DEPLOY},
    "deployment-capture-export": {"GET": DEPLOY},
    "api-deployment-drift": {"GET": VIEW},
    "api-version-drift-reference": {"GET": VIEW, "POST": UPLOAD},
}
KWARGS = {
    "name": "m",
    "number": 1,
    "model_name": "m",
    "prefix": "nope",
    "alias": "staging",
    "action": "scale",
    "user_id": 1,
    "version": 1,
    "rule_id": 1,
}
DEPLOYMENT_KWARGS = {"name": "d"}  # for deployment-* and prediction patterns
DEPLOYMENT_ROUTES = ("deployment-", "api-deployment-", "predict", "mlflow-", "v1-", "v2-")
# Prediction routes: a key scoped to another deployment gets the 404 of a missing one.
KEYED_ROUTES = {
    name
    for name, rule in RULES.items()
    if name.startswith(DEPLOYMENT_ROUTES[2:]) and rule != {"GET": PUBLIC}
}


def _patterns(resolver=None, prefix=""):
    for p in (resolver or get_resolver()).url_patterns:
        if isinstance(p, URLResolver):
            if p.namespace == "admin":
                continue  # Django admin: staff only, checked below
            yield from _patterns(p, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield p.name, prefix + str(p.pattern)


def _url(route: str, name: str) -> str:
    kwargs = dict(KWARGS)
    if name.startswith(DEPLOYMENT_ROUTES) and (name != "deployment-create"):
        kwargs.update(DEPLOYMENT_KWARGS)
    url = route.removeprefix("^").removesuffix("$")  # re_path patterns too
    for key, value in kwargs.items():
        for conv in ("str", "int"):
            url = url.replace(f"<{conv}:{key}>", str(value))
        url = re.sub(rf"\(\?P<{key}>[^)]*\)", str(value), url)
    assert "<" not in url, f"no sample value for a parameter of {route}"
    return "/" + url


def test_every_url_pattern_has_a_rule():
    names = {name for name, _ in _patterns()}
    missing = sorted(n for n in names if n not in RULES)
    assert not missing, f"add authorization rules for: {missing}"
    stale = sorted(n for n in RULES if n not in names)
    assert not stale, f"rules for patterns that no longer exist: {stale}"


CASES = [
    (name, route, method, who)
    for name, route in _patterns()
    for method in (RULES.get(name) or {"GET": None})
    for who in PRINCIPALS
]


@pytest.fixture
def world():
    uploader = UserFactory()
    stored = artifact_store([b"\x80\x04N."])
    model = RegisteredModel.objects.create(name="m")
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        status="ready",
        artifact_sha256=stored.sha256,
        artifact_size=1,
        format="pickle",
        uploaded_by=uploader,
        schema={"n_features": 3},
    )
    Deployment.objects.create(
        name="d", model=model, version=version, runtime="process", state="stopped"
    )
    other_model = RegisteredModel.objects.create(name="other")
    other_version = ModelVersion.objects.create(
        model=other_model, number=1, status="ready", artifact_sha256="1" * 64, artifact_size=1
    )
    Deployment.objects.create(
        name="elsewhere",
        model=other_model,
        version=other_version,
        runtime="process",
        state="stopped",
    )
    owner = UserFactory()
    owner.groups.add(Group.objects.get_or_create(name="deployer")[0])
    _, raw = keys.api_key_create(
        user=owner, actor=Actor.system(), name="elsewhere", deployment_names=["elsewhere"]
    )
    return raw


def _client(who: str, raw_key: str) -> Client:
    client = Client()
    if who == "key-elsewhere":
        client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {raw_key}"
    elif who != "anonymous":
        user = UserFactory()
        user.groups.add(Group.objects.get_or_create(name=who)[0])
        client.force_login(user)
    return client


def _denied(response, name: str, who: str) -> bool:
    if response.status_code in (401, 403):
        return True
    if response.status_code == 302 and "/accounts/login/" in response.get("Location", ""):
        return True
    return who == "key-elsewhere" and name in KEYED_ROUTES and response.status_code == 404


@pytest.mark.parametrize(
    "name,route,method,who", CASES, ids=[f"{n}-{m}-{w}" for n, _, m, w in CASES]
)
def test_matrix(world, name, route, method, who):
    rule = RULES[name][method]
    client = _client(who, world)
    url = _url(route, name)
    body = {"features": [1, 2, 3]} if name.startswith("predict") else {}
    kwargs = (
        {"content_type": "application/json", "data": body}
        if method in ("POST", "PUT", "PATCH", "DELETE")
        else {}
    )
    if name == "model-upload" and method == "POST":
        kwargs = {"data": {"model_name": "m", "file": io.BytesIO(b"\x80\x04N.")}}
    response = getattr(client, method.lower())(url, **kwargs)
    # 503 is the answer of a stopped deployment: the call got through authorization.
    assert response.status_code < 500 or response.status_code == 503, (
        url,
        method,
        who,
        response.status_code,
    )
    if rule == PUBLIC:
        assert not _denied(response, name, who), (url, method, who, response.status_code)
        return
    if rule == ANY_USER:
        return
    allowed = who in rule
    assert _denied(response, name, who) != allowed, (
        f"{method} {url} as {who}: got {response.status_code}, expected "
        f"{'allowed' if allowed else 'denied'}"
    )


@pytest.mark.parametrize("who", ["anonymous", "viewer", "deployer", "approver", "admin"])
def test_django_admin_is_for_staff_only(world, who):
    response = _client(who, world).get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
