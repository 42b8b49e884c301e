"""Governance (issue 12): approval gates deployment, validation failure reads `invalid` apart
from an approver's `rejected`, rejecting needs a comment, archive and delete."""

from __future__ import annotations

import os
import subprocess
import sys
from http import HTTPStatus
from pathlib import Path

import pytest
from django.urls import reverse

from deployments_app.models import Build, Deployment
from models_app import services
from models_app.models import ModelAlias, ModelVersion, RegisteredModel
from models_app.storage import artifact_path, artifact_store
from portal.audit import Actor
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _approval_required(settings):
    settings.PORTAL_REQUIRE_APPROVAL = True
    # Launches here never run a task (no commit): the runtime only needs to be allowed.
    settings.PORTAL_ALLOWED_RUNTIMES = ["process"]


def _version(name="m", number=1, *, approval="pending", status="ready", data=None):
    model, _ = RegisteredModel.objects.get_or_create(name=name)
    stored = artifact_store([data or f"{name}-{number}".encode()])
    return ModelVersion.objects.create(
        model=model,
        number=number,
        status=status,
        approval=approval,
        artifact_sha256=stored.sha256,
        artifact_size=stored.size,
        format="joblib",
    )


def _launch(client, model="m", version=1, name="d"):
    return client.post(
        "/api/v1/deployments",
        {"name": name, "model": model, "version": version, "runtime": "process"},
        format="json",
    )


def _running(version: ModelVersion, name="d", previous: ModelVersion | None = None) -> Deployment:
    return Deployment.objects.create(
        name=name,
        model=version.model,
        version=version,
        previous_version=previous,
        runtime="process",
        state="running",
    )


# --------------------------------------------------------------------------- approval gate


def test_require_approval_is_on_by_default():
    env = {k: v for k, v in os.environ.items() if k != "PORTAL_REQUIRE_APPROVAL"}
    env["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from django.conf import settings as s; print(s.PORTAL_REQUIRE_APPROVAL)",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    assert out.stdout.strip() == "True"


def test_a_pending_version_is_refused_with_409_and_the_reason(api_client):
    _version()
    response = _launch(api_client("deployer"))
    assert response.status_code == HTTPStatus.CONFLICT
    assert "not approved yet" in response.json()["error"]
    assert "PORTAL_REQUIRE_APPROVAL" in response.json()["error"]
    assert not Deployment.objects.exists()


def test_an_approved_version_deploys_and_it_is_audited(api_client):
    _version(approval="approved")
    response = _launch(api_client("deployer"))
    assert response.status_code == HTTPStatus.ACCEPTED, response.content
    assert AuditEvent.objects.filter(action="deployment.launched", target_name="d").exists()


def test_a_pending_version_deploys_when_approval_is_not_required(api_client, settings):
    settings.PORTAL_REQUIRE_APPROVAL = False
    _version()
    assert _launch(api_client("deployer")).status_code == HTTPStatus.ACCEPTED


@pytest.mark.parametrize("required", [True, False])
def test_a_rejected_version_never_deploys(api_client, settings, required):
    settings.PORTAL_REQUIRE_APPROVAL = required
    _version(approval="rejected")
    response = _launch(api_client("deployer"))
    assert response.status_code == HTTPStatus.CONFLICT
    assert "rejected by an approver" in response.json()["error"]


def test_update_to_a_pending_version_is_refused(api_client):
    v1 = _version(approval="approved")
    _version(number=2, data=b"two")
    _running(v1)
    response = api_client("deployer").post(
        "/api/v1/deployments/d/actions", {"action": "update", "version": 2}, format="json"
    )
    assert response.status_code == HTTPStatus.CONFLICT
    assert "not approved yet" in response.json()["error"]
    assert not AuditEvent.objects.filter(action="deployment.update_requested").exists()


def test_rollback_to_a_rejected_version_is_refused(api_client):
    v1 = _version(approval="rejected")
    v2 = _version(number=2, approval="approved", data=b"two")
    _running(v2, previous=v1)
    response = api_client("deployer").post(
        "/api/v1/deployments/d/actions", {"action": "rollback"}, format="json"
    )
    assert response.status_code == HTTPStatus.CONFLICT
    assert "rejected by an approver" in response.json()["error"]
    assert not AuditEvent.objects.filter(action="deployment.rolled_back").exists()


def test_starting_a_stopped_deployment_of_a_rejected_version_is_refused(api_client):
    deployment = _running(_version(approval="rejected"))
    Deployment.objects.filter(pk=deployment.pk).update(state="stopped", desired_state="stopped")
    response = api_client("deployer").post(
        "/api/v1/deployments/d/actions", {"action": "start"}, format="json"
    )
    assert response.status_code == HTTPStatus.CONFLICT
    assert "rejected by an approver" in response.json()["error"]
    assert Deployment.objects.get().state == "stopped"
    assert not AuditEvent.objects.filter(action="deployment.start_requested").exists()


def test_an_archived_version_or_model_is_not_deployable(api_client):
    version = _version(approval="approved")
    services.model_version_archive(version=version, actor=Actor.system())
    response = _launch(api_client("deployer"))
    assert response.status_code == HTTPStatus.CONFLICT
    assert "archived" in response.json()["error"]
    services.model_version_archive(version=version, actor=Actor.system(), archived=False)
    services.model_archive(model=version.model, actor=Actor.system())
    response = _launch(api_client("deployer"))
    assert response.status_code == HTTPStatus.CONFLICT
    assert "model 'm' is archived" in response.json()["error"]


def test_the_version_page_disables_the_deploy_form_and_says_why(role_client):
    _version()
    client = role_client("deployer")
    page = client.get(reverse("version-detail", args=["m", 1])).content.decode()
    assert 'id="deploy-refusal"' in page and "not approved yet" in page
    assert "<fieldset disabled" in page
    # Posting anyway (a stale page) is refused by the service, with the message on the page.
    response = client.post(
        reverse("deployment-create", args=["m", 1]),
        {"name": "d", "runtime": "", "replicas": 1, "memory_mb": 512, "cpus": 1.0},
        follow=True,
    )
    assert "not approved yet" in response.content.decode()
    assert not Deployment.objects.exists()


def test_the_deploy_form_is_enabled_for_an_approved_version(role_client):
    _version(approval="approved")
    page = role_client("deployer").get(reverse("version-detail", args=["m", 1])).content.decode()
    assert 'id="deploy-refusal"' not in page and "<fieldset disabled" not in page


# --------------------------------------------------------------------------- reject needs a comment


def test_rejecting_without_a_comment_is_refused_by_the_api(api_client):
    _version()
    client = api_client("approver")
    response = client.post("/api/v1/models/m/versions/1/approval", {"decision": "reject"})
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "comment" in response.json()["error"]
    assert ModelVersion.objects.get().approval == "pending"
    assert not AuditEvent.objects.filter(action="model_version.rejected").exists()


def test_rejecting_with_a_comment_reads_rejected_by_approver(api_client, role_client):
    _version()
    client = api_client("approver")
    response = client.post(
        "/api/v1/models/m/versions/1/approval", {"decision": "reject", "comment": "leaks PII"}
    )
    assert response.status_code == HTTPStatus.OK
    body = response.json()
    assert (body["status"], body["approval"], body["approval_comment"]) == (
        "ready",
        "rejected",
        "leaks PII",
    )
    event = AuditEvent.objects.get(action="model_version.rejected")
    assert event.details["comment"] == "leaks PII"
    page = role_client("viewer").get(reverse("version-detail", args=["m", 1])).content.decode()
    assert "rejected by approver" in page and "leaks PII" in page


def test_the_reject_form_needs_a_comment(role_client):
    _version()
    client = role_client("approver")
    response = client.post(
        reverse("version-approve", args=["m", 1]),
        {"decision": "reject", "comment": " "},
        follow=True,
    )
    assert "needs a comment" in response.content.decode()
    assert ModelVersion.objects.get().approval == "pending"


def test_the_service_refuses_a_rejection_without_a_comment(make_user):
    from portal.errors import ApplicationError

    version = _version()
    with pytest.raises(ApplicationError, match="comment"):
        services.model_version_approve(
            version=version, user=make_user("approver"), actor=Actor.system(), approve=False
        )


def test_invalid_and_rejected_read_differently_in_the_api_and_pages(api_client, role_client):
    _version("bad", status="invalid")
    _version("nope", approval="rejected")
    api = api_client("viewer")
    assert api.get("/api/v1/models/bad/versions/1").json()["status"] == "invalid"
    nope = api.get("/api/v1/models/nope/versions/1").json()
    assert (nope["status"], nope["approval"]) == ("ready", "rejected")
    client = role_client("viewer")
    bad_page = client.get(reverse("model-detail", args=["bad"])).content.decode()
    assert '<span class="badge invalid">invalid</span>' in bad_page
    assert "rejected by approver" not in bad_page
    nope_page = client.get(reverse("model-detail", args=["nope"])).content.decode()
    assert '<span class="badge rejected">rejected by approver</span>' in nope_page


def test_migration_turns_validation_rejections_into_invalid(transactional_db):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    old = [("models_app", "0002_version_validation_heartbeat")]
    new = [("models_app", "0003_governance_invalid_archive")]
    executor.migrate(old)
    apps = executor.loader.project_state(old).apps
    OldModel = apps.get_model("models_app", "RegisteredModel")  # noqa: N806
    OldVersion = apps.get_model("models_app", "ModelVersion")  # noqa: N806
    model = OldModel.objects.create(name="legacy")
    OldVersion.objects.create(
        model=model, number=1, status="rejected", artifact_sha256="a" * 64, artifact_size=1
    )
    OldVersion.objects.create(
        model=model,
        number=2,
        status="ready",
        approval="rejected",
        artifact_sha256="b" * 64,
        artifact_size=1,
    )
    executor = MigrationExecutor(connection)
    executor.migrate(new)
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    rows = dict(ModelVersion.objects.filter(model__name="legacy").values_list("number", "status"))
    assert rows == {1: "invalid", 2: "ready"}
    assert ModelVersion.objects.get(model__name="legacy", number=2).approval == "rejected"


# --------------------------------------------------------------------------- archive


def test_archiving_a_version_hides_it_from_lists_and_is_audited(api_client):
    _version()
    _version(number=2, data=b"two")
    client = api_client("deployer")
    response = client.post("/api/v1/models/m/versions/1/archive", {"archived": True}, format="json")
    assert response.status_code == HTTPStatus.OK
    assert response.json()["archived_at"]
    assert AuditEvent.objects.filter(action="model_version.archived", target_name="m v1").exists()
    listed = [v["number"] for v in client.get("/api/v1/models/m/versions").json()]
    assert listed == [2]
    listed = [v["number"] for v in client.get("/api/v1/models/m/versions?archived=true").json()]
    assert listed == [2, 1]
    assert artifact_path(ModelVersion.objects.get(number=1).artifact_sha256).exists()
    # Unarchiving brings it back, audited too.
    client.post("/api/v1/models/m/versions/1/archive", {"archived": False}, format="json")
    assert AuditEvent.objects.filter(action="model_version.unarchived").exists()
    assert len(client.get("/api/v1/models/m/versions").json()) == 2


def test_archiving_a_model_hides_it_from_the_list_and_is_audited(api_client, role_client):
    _version()
    _version("other")
    client = api_client("deployer")
    response = client.post("/api/v1/models/m/archive", {}, format="json")
    assert response.status_code == HTTPStatus.OK and response.json()["archived_at"]
    assert AuditEvent.objects.filter(action="model.archived", target_name="m").exists()
    results = client.get("/api/v1/models").json()
    names = [m["name"] for m in results.get("results", results)]
    assert names == ["other"]
    results = client.get("/api/v1/models?archived=true").json()
    assert [m["name"] for m in results.get("results", results)] == ["m", "other"]
    assert client.get("/api/v1/models/m").status_code == HTTPStatus.OK
    page = role_client("viewer").get(reverse("model-list")).content.decode()
    assert ">other<" in page and ">m<" not in page
    page = role_client("viewer").get(reverse("model-list") + "?archived=1").content.decode()
    assert ">m<" in page and "badge archived" in page


def test_archiving_twice_writes_one_event(make_user):
    version = _version()
    services.model_version_archive(version=version, actor=Actor.system())
    services.model_version_archive(version=version, actor=Actor.system())
    assert AuditEvent.objects.filter(action="model_version.archived").count() == 1


@pytest.mark.parametrize("who", ["viewer", "approver"])
def test_only_deployers_and_admins_archive(api_client, who):
    _version()
    response = api_client(who).post("/api/v1/models/m/archive", {}, format="json")
    assert response.status_code == HTTPStatus.FORBIDDEN
    assert RegisteredModel.objects.get().archived_at is None


def test_the_archive_button_on_the_version_page(role_client):
    _version()
    client = role_client("deployer")
    page = client.get(reverse("version-detail", args=["m", 1])).content.decode()
    assert "Archive</button>" in page and "Delete version" not in page  # delete: admins only
    response = client.post(reverse("version-archive", args=["m", 1]), {"archived": "1"})
    assert response.status_code == HTTPStatus.FOUND
    assert ModelVersion.objects.get().archived_at is not None
    assert AuditEvent.objects.filter(action="model_version.archived").exists()


# --------------------------------------------------------------------------- delete


def test_admin_deletes_a_version_nothing_serves_and_its_artifact(api_client):
    version = _version()
    ModelAlias.objects.create(model=version.model, name="staging", version=version)
    path = artifact_path(version.artifact_sha256)
    response = api_client("admin").delete("/api/v1/models/m/versions/1")
    assert response.status_code == HTTPStatus.NO_CONTENT
    assert not ModelVersion.objects.exists() and not ModelAlias.objects.exists()
    event = AuditEvent.objects.get(action="model_version.deleted")
    assert event.target_name == "m v1" and event.details["aliases"] == ["staging"]
    assert path.exists()  # removed on commit: see the next test


def test_the_artifact_goes_on_commit_unless_another_version_shares_it(
    django_capture_on_commit_callbacks,
):
    shared = _version("a", data=b"same bytes")
    twin = _version("b", data=b"same bytes")
    alone = _version("c", data=b"other bytes")
    assert shared.artifact_sha256 == twin.artifact_sha256
    with django_capture_on_commit_callbacks(execute=True):
        services.model_version_delete(version=shared, actor=Actor.system())
        services.model_version_delete(version=alone, actor=Actor.system())
    assert artifact_path(twin.artifact_sha256).exists()  # "b" still holds these bytes
    assert not artifact_path(alone.artifact_sha256).exists()
    with django_capture_on_commit_callbacks(execute=True):
        services.model_delete(model=twin.model, actor=Actor.system())
    assert not artifact_path(twin.artifact_sha256).exists()
    assert AuditEvent.objects.filter(action="model.deleted", target_name="b").exists()


@pytest.mark.parametrize("reference", ["serving", "previous", "build"])
def test_a_version_a_deployment_references_is_not_deleted(api_client, reference):
    v1 = _version(approval="approved")
    v2 = _version(number=2, approval="approved", data=b"two")
    if reference == "serving":
        _running(v1)
    elif reference == "previous":
        _running(v2, previous=v1)
    else:
        Build.objects.create(deployment=_running(v2), version=v1)
    response = api_client("admin").delete("/api/v1/models/m/versions/1")
    assert response.status_code == HTTPStatus.CONFLICT
    assert "deployment(s) d" in response.json()["error"]
    assert ModelVersion.objects.filter(number=1).exists()
    assert not AuditEvent.objects.filter(action="model_version.deleted").exists()


def test_a_model_a_deployment_serves_is_not_deleted(api_client):
    _running(_version(approval="approved"))
    response = api_client("admin").delete("/api/v1/models/m")
    assert response.status_code == HTTPStatus.CONFLICT
    assert ModelVersion.objects.exists() and RegisteredModel.objects.exists()
    assert not AuditEvent.objects.filter(action="model.deleted").exists()


def test_admin_deletes_a_model_with_its_versions(api_client):
    _version()
    _version(number=2, data=b"two")
    response = api_client("admin").delete("/api/v1/models/m")
    assert response.status_code == HTTPStatus.NO_CONTENT
    assert not RegisteredModel.objects.exists() and not ModelVersion.objects.exists()
    assert AuditEvent.objects.filter(action="model.deleted", target_name="m").exists()
    assert AuditEvent.objects.filter(action="model_version.deleted").count() == 2


@pytest.mark.parametrize("who", ["viewer", "deployer", "approver"])
def test_only_admins_delete(api_client, who):
    _version()
    client = api_client(who)
    assert client.delete("/api/v1/models/m/versions/1").status_code == HTTPStatus.FORBIDDEN
    assert client.delete("/api/v1/models/m").status_code == HTTPStatus.FORBIDDEN
    assert ModelVersion.objects.exists()


def test_the_delete_buttons_on_the_pages(role_client):
    _version()
    _version(number=2, data=b"two")
    client = role_client("admin")
    page = client.get(reverse("version-detail", args=["m", 1])).content.decode()
    assert "Delete version" in page and "confirm(" in page
    response = client.post(reverse("version-delete", args=["m", 1]))
    assert response.status_code == HTTPStatus.FOUND and response.url == reverse(
        "model-detail", args=["m"]
    )
    assert AuditEvent.objects.filter(action="model_version.deleted").exists()
    response = client.post(reverse("model-delete", args=["m"]))
    assert response.status_code == HTTPStatus.FOUND and response.url == reverse("model-list")
    assert not RegisteredModel.objects.exists()
    assert AuditEvent.objects.filter(action="model.deleted").exists()


def test_a_refused_delete_shows_the_reason_on_the_page(role_client):
    _running(_version(approval="approved"))
    response = role_client("admin").post(reverse("model-delete", args=["m"]), follow=True)
    assert "delete those deployments first" in response.content.decode()
    assert RegisteredModel.objects.exists()
