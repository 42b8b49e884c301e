"""The deployment and key pages follow state (issue 12): buttons per state, refused
transitions, the live status fragments, POST/redirect/GET for new keys, sorted tables."""

from __future__ import annotations

from datetime import date, timedelta
from http import HTTPStatus

import pytest
from django.utils import timezone

from deployments_app import buildlog, services, transitions
from deployments_app.models import ApiKey, Build, Deployment
from models_app.models import ModelVersion
from portal import latency
from portal.audit import Actor
from portal.errors import ConflictError
from portal.models import AuditEvent
from tests.portal.test_dashboard import log_calls, make_deployment

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_tasks(monkeypatch):
    """Commands record intent and queue work; no worker here (and none of another suite's)."""
    queued: list[tuple] = []
    monkeypatch.setattr(services, "_enqueue", lambda *args, **kw: queued.append(args))
    return queued


def _buttons(html: str) -> set[str]:
    return {a for a in transitions.ALLOWED if f'data-action="{a}"' in html}


@pytest.mark.parametrize(
    ("state", "shown", "hidden"),
    [
        ("running", {"stop", "restart", "scale", "delete"}, {"start"}),
        ("degraded", {"stop", "restart", "scale", "delete"}, {"start"}),
        ("stopped", {"start", "scale", "delete"}, {"stop", "restart", "update", "rollback"}),
        ("failed", {"start", "stop", "delete"}, {"scale", "update", "rollback"}),
        ("building", {"stop", "delete"}, {"start", "restart", "scale", "update"}),
        ("stopping", {"delete"}, {"start", "stop", "restart", "scale"}),
    ],
)
def test_deployment_page_shows_only_the_buttons_its_state_allows(role_client, state, shown, hidden):
    make_deployment("dep", state=state)
    html = role_client("deployer").get("/deployments/dep/").content.decode()
    buttons = _buttons(html)
    assert shown <= buttons, buttons
    assert not (hidden & buttons), buttons


def test_update_and_rollback_buttons_name_versions_and_confirm(role_client):
    deployment = make_deployment("dep")
    v1 = deployment.version
    v2 = ModelVersion.objects.create(
        model=deployment.model, number=2, status="ready", artifact_sha256="f" * 64, artifact_size=1
    )
    Deployment.objects.filter(pk=deployment.pk).update(version=v2, previous_version=v1)
    html = role_client("deployer").get("/deployments/dep/").content.decode()
    assert "Roll back to v1</button>" in html
    assert "back from v2 to v1?" in html  # the confirm names both versions
    assert "Update dep from v2 to v" in html
    assert "return confirm('Stop dep?" in html


def test_start_on_a_running_deployment_is_refused_and_changes_nothing(role_client, no_tasks):
    deployment = make_deployment("dep", state="running")
    client = role_client("deployer")
    response = client.post("/deployments/dep/start", follow=True)
    assert response.status_code == HTTPStatus.OK
    assert "only a stopped or failed deployment can be started" in response.content.decode()
    deployment.refresh_from_db()
    assert deployment.state == "running"
    assert no_tasks == []
    assert not AuditEvent.objects.filter(action="deployment.start_requested").exists()


def test_api_start_on_a_running_deployment_is_409(api_client):
    make_deployment("dep", state="running")
    response = api_client("deployer").post(
        "/api/v1/deployments/dep/actions", {"action": "start"}, format="json"
    )
    assert response.status_code == HTTPStatus.CONFLICT
    assert Deployment.objects.get(name="dep").state == "running"


def test_stop_on_a_stopped_deployment_is_refused(role_client, no_tasks):
    make_deployment("dep", state="stopped")
    response = role_client("deployer").post("/deployments/dep/stop", follow=True)
    assert "it is stopped already" in response.content.decode()
    assert Deployment.objects.get(name="dep").state == "stopped"
    assert no_tasks == []
    assert not AuditEvent.objects.filter(action="deployment.stop_requested").exists()


def test_start_on_a_stopped_deployment_still_works_and_is_audited(role_client, no_tasks):
    make_deployment("dep", state="stopped")
    role_client("deployer").post("/deployments/dep/start")
    assert Deployment.objects.get(name="dep").state == "pending"
    assert [args[0] for args in no_tasks] == ["deploy"]
    assert AuditEvent.objects.filter(action="deployment.start_requested").count() == 1


def test_start_compare_and_set_refuses_a_stale_row():
    deployment = make_deployment("dep", state="stopped")
    Deployment.objects.filter(pk=deployment.pk).update(state="running")  # another tab started it
    with pytest.raises(ConflictError):
        services.deployment_start(deployment=deployment, actor=Actor.system())
    assert Deployment.objects.get(pk=deployment.pk).state == "running"
    assert not AuditEvent.objects.filter(action="deployment.start_requested").exists()


def test_status_returns_the_live_fragments(role_client):
    deployment = make_deployment("dep", state="running")
    log_calls("dep", [10.0, 20.0, 30.0])
    data = role_client("deployer").get("/deployments/dep/status").json()
    assert data["state"] == "running" and data["version"] == 1
    assert set(data["html"]) == {
        "summary", "actions", "stats", "calls", "replicas", "events", "build", "rollout",
    }  # fmt: skip
    assert "start" not in data["actions"] and "stop" in data["actions"]
    assert "alice" in data["html"]["calls"]
    # p50 from the latency buckets (portal.latency): 20 ms within one bucket's resolution.
    histogram = latency.merged({latency.bucket_of(v): 1} for v in (10.0, 20.0, 30.0))
    p50 = latency.quantile(histogram, 0.5)
    assert abs(p50 - 20.0) / 20.0 < 0.12 and f"{p50:.1f}" in data["html"]["stats"]
    # A viewer gets no buttons at all.
    viewer = role_client("viewer").get("/deployments/dep/status").json()
    assert "actions" not in viewer["html"]
    assert deployment.name in viewer["html"]["summary"]


def test_history_and_calls_show_dates_with_the_time_zone(role_client, settings):
    make_deployment("dep")
    services._event(Deployment.objects.get(name="dep"), "something happened")
    log_calls("dep", [1.0])
    html = role_client("viewer").get("/deployments/dep/").content.decode()
    today = timezone.localdate().isoformat()
    assert f"{today} " in html  # history entries carry their date
    assert '<span class="tz">UTC</span>' in html
    assert "Time (UTC)" in html


# --------------------------------------------------------------------------- build log


def test_build_log_hides_internal_paths_and_folds_pip_noise(settings, tmp_path):
    settings.PORTAL_WHEELHOUSE = tmp_path / "wheels"
    settings.PORTAL_ENV_CACHE = tmp_path / "envs"
    log = "\n".join(
        [
            f"downloading wheels into {tmp_path}/wheels",
            f"creating environment {tmp_path}/envs/abc123",
            "Step 3/8 : RUN pip install",
            "Looking in links: /wheels",
            *[f"Processing /wheels/pkg{i}-1.0-py3-none-any.whl" for i in range(12)],
            "Installing collected packages: pkg0, pkg1",
            "Successfully installed pkg0-1.0 pkg1-1.0",
            "context in /tmp/portal-build-x1y2/ctx",
        ]
    )
    text = buildlog.hide_paths(log)
    assert str(tmp_path) not in text
    assert "<wheelhouse>" in text and "<env-cache>/abc123" in text
    assert "/tmp/portal-build-x1y2" not in text and "<tmp>/ctx" in text
    segs = buildlog.segments(log)
    folded = [s for s in segs if s.folded]
    assert len(folded) == 1 and len(folded[0].lines) == 13
    assert "Successfully installed" in segs[-1].text  # what matters stays visible


def test_build_log_on_the_page_is_folded_and_path_free(role_client, settings, tmp_path):
    settings.PORTAL_WHEELHOUSE = tmp_path / "wheels"
    deployment = make_deployment("dep")
    Build.objects.create(
        deployment=deployment,
        version=deployment.version,
        status="succeeded",
        log=f"downloading wheels into {tmp_path}/wheels\n"
        + "\n".join(f"Collecting pkg{i}" for i in range(5)),
    )
    client = role_client("viewer")
    html = client.get("/deployments/dep/").content.decode()
    assert str(tmp_path) not in html
    assert '<details class="fold"><summary>5 lines of pip/docker detail</summary>' in html
    status = client.get("/deployments/dep/status").json()
    assert str(tmp_path) not in status["build_log"] + status["html"]["build"]


# --------------------------------------------------------------------------- keys


def _key_form(**extra):
    return {"name": "ci", "deployments": ["dep"], "model": "", "expires_on": "", **extra}


def test_creating_a_key_redirects_and_shows_the_secret_once(role_client):
    make_deployment("dep")
    client = role_client("deployer")
    response = client.post("/keys/", _key_form())
    assert response.status_code == HTTPStatus.FOUND and response["Location"] == "/keys/"
    assert ApiKey.objects.count() == 1
    page = client.get("/keys/")
    html = page.content.decode()
    assert 'id="new-key"' in html and "mp_" in html and 'id="copy-key"' in html
    assert page["Cache-Control"] == "no-store"
    # Reloading shows the list without the secret, and creates nothing.
    again = client.get("/keys/").content.decode()
    assert 'id="new-key"' not in again
    assert ApiKey.objects.count() == 1
    assert AuditEvent.objects.filter(action="api_key.created").count() == 1


def test_key_expiry_is_a_date_and_the_model_a_select(role_client):
    make_deployment("dep")
    client = role_client("deployer")
    html = client.get("/keys/").content.decode()
    assert 'type="date" name="expires_on"' in html
    assert '<select name="model"' in html and '<option value="dep-model">' in html
    day = date.today() + timedelta(days=30)
    client.post("/keys/", _key_form(model="dep-model", deployments=[], expires_on=day.isoformat()))
    key = ApiKey.objects.get()
    assert key.model.name == "dep-model"
    assert timezone.localtime(key.expires_at).date() == day + timedelta(days=1)
    assert timezone.localtime(key.expires_at).hour == 0


def test_key_with_an_unknown_model_is_a_form_error(role_client):
    make_deployment("dep")
    response = role_client("deployer").post("/keys/", _key_form(model="nope"))
    assert response.status_code == HTTPStatus.OK
    assert ApiKey.objects.count() == 0


def test_revoke_confirms(role_client):
    make_deployment("dep")
    client = role_client("deployer")
    client.post("/keys/", _key_form())
    html = client.get("/keys/").content.decode()
    assert "return confirm('Revoke the key ci" in html


# --------------------------------------------------------------------------- tables


def test_deployment_list_sorts_and_paginates(role_client):
    for i in range(30):
        make_deployment(f"d{i:02d}", replicas=1)
    client = role_client("viewer")
    first = client.get("/deployments/").content.decode()
    assert "d00" in first and "d24" in first and "d25" not in first
    assert "1–25 of 30" in first and 'rel="next"' in first
    second = client.get("/deployments/?page=2").content.decode()
    assert "d29" in second and "d00" not in second
    desc = client.get("/deployments/?sort=-name").content.decode()
    assert desc.index("d29") < desc.index("d10")
    assert 'aria-sort="descending"' in desc
    bogus = client.get("/deployments/?sort=password").content.decode()  # not a column: default
    assert bogus.index("d00") < bogus.index("d01")


def test_model_and_key_lists_sort(role_client):
    make_deployment("alpha")
    make_deployment("beta")
    client = role_client("deployer")
    html = client.get("/models/?sort=-name").content.decode()
    assert html.index("beta-model") < html.index("alpha-model")
    for name in ("k-a", "k-b"):
        client.post("/keys/", _key_form(name=name, deployments=["alpha"]))
    html = client.get("/keys/?sort=name").content.decode()
    assert html.index("k-a") < html.index("k-b")
    html = client.get("/keys/?sort=-name").content.decode()
    assert html.index("k-b") < html.index("k-a")


def test_nav_highlights_the_current_section(role_client):
    make_deployment("dep")
    html = role_client("deployer").get("/deployments/dep/").content.decode()
    assert '<a href="/deployments/" class="current" aria-current="page">Deployments</a>' in html
    assert '<a href="/models/">Models</a>' in html
    assert 'aria-label="breadcrumbs"' in html


def test_builds_api_hides_internal_paths(api_client, settings, tmp_path):
    settings.PORTAL_ENV_CACHE = tmp_path / "envs"
    deployment = make_deployment("dep")
    Build.objects.create(
        deployment=deployment,
        version=deployment.version,
        status="failed",
        log=f"creating environment {tmp_path}/envs/abc",
        error=f"pip failed in {tmp_path}/envs/abc",
    )
    [build] = api_client("viewer").get("/api/v1/deployments/dep/builds").json()
    assert build["log"] == "creating environment <env-cache>/abc"
    assert build["error"] == "pip failed in <env-cache>/abc"


def test_status_leaves_out_the_parts_the_page_already_shows(role_client):
    deployment = make_deployment("dep")
    Build.objects.create(deployment=deployment, version=deployment.version, log="Step 1/2")
    client = role_client("deployer")
    first = client.get("/deployments/dep/status").json()
    assert {"actions", "build"} <= set(first["html"])
    query = {"actions": first["actions_key"], "build": first["build_key"]}
    again = client.get("/deployments/dep/status", query).json()
    assert "actions" not in again["html"] and "build" not in again["html"]
    assert again["build_log"] is None and "stats" in again["html"]
    Build.objects.filter(deployment=deployment).update(log="Step 1/2\nStep 2/2")
    moved = client.get("/deployments/dep/status", query).json()
    assert "Step 2/2" in moved["html"]["build"] and "actions" not in moved["html"]


def test_a_newly_ready_version_changes_the_buttons_key(role_client):
    deployment = make_deployment("dep")
    client = role_client("deployer")
    before = client.get("/deployments/dep/status").json()
    ModelVersion.objects.create(
        model=deployment.model, number=2, status="ready", artifact_sha256="e" * 64, artifact_size=1
    )
    after = client.get("/deployments/dep/status", {"actions": before["actions_key"]}).json()
    assert after["actions_key"] != before["actions_key"]
    assert '<option value="2">v2</option>' in after["html"]["actions"]
