"""Registry rules: hostile uploads rejected end to end, size limit, approval, aliases."""

from __future__ import annotations

import io
import pickle
from http import HTTPStatus

import pytest

from models_app import services
from models_app.models import ModelAlias, ModelVersion
from portal.audit import Actor
from portal.celery import app
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR
from tests.models_app import hostile

pytestmark = pytest.mark.django_db


@pytest.fixture
def eager(settings):
    """Validation inline (same code path as the worker), for the many small cases here."""
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def _upload(client, name: str, data: bytes, **extra):
    return client.post(
        f"/api/v1/models/{name}/versions", {"file": io.BytesIO(data), **extra}, format="multipart"
    )


HOSTILE = {
    "os-system-reduce": lambda m: hostile.dumps(hostile.os_system(m)),
    "subprocess-popen": lambda m: hostile.dumps(hostile.subprocess_popen(m)),
    "eval": lambda m: hostile.dumps(hostile.builtins_eval(m)),
    "exec": lambda m: hostile.dumps(hostile.builtins_exec(m)),
    "global-opcode": hostile.global_os_system,
    "getattr-import": hostile.getattr_import,
    "stack-global-memo": hostile.stack_global_memo,
    "inst-opcode": hostile.inst_os_system,
    "obj-opcode": hostile.obj_os_system,
    "runpy": lambda m: hostile.dumps(hostile.runpy_run_code(m)),
    "codecs-eval": lambda m: hostile.dumps(hostile.codecs_eval(m)),
    "appended-stream": lambda m: (
        (FIXTURE_DIR / "house_price_linreg.pkl").read_bytes() + hostile.dumps(hostile.os_system(m))
    ),
    "truncated": lambda m: (FIXTURE_DIR / "house_price_linreg.pkl").read_bytes()[:200],
    "pdf": lambda m: hostile.PDF,
    "csv-text": lambda m: hostile.TEXT,
    "random-bytes": lambda m: hostile.random_bytes(),
    # Made of allowed names only (issue 11): refused by the scan, the exact allowlist or the
    # restricted loader in the sandbox.
    **{
        name.replace("_", "-"): make
        for name, (make, _fmt, _needle) in hostile.ALLOWED_NAME_PAYLOADS.items()
    },
}


@pytest.mark.security
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_upload_is_invalid_with_a_reason_and_never_runs(
    eager, django_capture_on_commit_callbacks, api_client, tmp_path, case
):
    marker = tmp_path / f"pwned-{case}"
    client = api_client("deployer")
    with django_capture_on_commit_callbacks(execute=True):
        response = _upload(client, "hostile", HOSTILE[case](marker))
    assert response.status_code == HTTPStatus.CREATED
    version = ModelVersion.objects.get(model__name="hostile")
    assert version.status == ModelVersion.Status.INVALID
    assert version.approval == ModelVersion.Approval.PENDING  # no approver said anything
    assert version.rejection_reason
    assert not marker.exists()
    assert AuditEvent.objects.filter(action="model_version.invalid").exists()


@pytest.mark.security
def test_compressed_joblib_payload_is_rejected_naming_the_global(
    eager, django_capture_on_commit_callbacks, api_client, tmp_path
):
    marker = tmp_path / "pwned"
    path = hostile.joblib_dump(
        {"model": hostile.os_system(marker)}, tmp_path / "m.joblib", compress=("xz", 3)
    )
    with django_capture_on_commit_callbacks(execute=True):
        _upload(api_client("deployer"), "hostile", path.read_bytes())
    version = ModelVersion.objects.get(model__name="hostile")
    assert version.status == "invalid"
    assert "system" in version.rejection_reason
    assert not marker.exists()


def test_a_plain_dict_is_rejected_as_not_a_model(
    eager, django_capture_on_commit_callbacks, api_client
):
    with django_capture_on_commit_callbacks(execute=True):
        _upload(
            api_client("deployer"),
            "notamodel",
            pickle.dumps({"weights": [1, 2, 3]}),
            sklearn_version="1.9.1",
        )
    version = ModelVersion.objects.get(model__name="notamodel")
    assert version.status == "invalid"
    assert "predict" in version.rejection_reason or "model" in version.rejection_reason


def test_oversized_upload_gets_413_and_stores_nothing(settings, api_client):
    settings.PORTAL_MAX_UPLOAD_MB = 1
    response = _upload(api_client("deployer"), "big", b"\x80\x04" + bytes(3 * 1024 * 1024))
    assert response.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert "limit of 1 MB" in response.json()["error"]
    assert not ModelVersion.objects.exists()
    assert not list(settings.PORTAL_ARTIFACT_DIR.rglob("*/sha256/*/*"))
    assert not [p for p in settings.PORTAL_ARTIFACT_DIR.rglob("*") if p.is_file()]


def test_empty_file_is_refused(api_client):
    response = _upload(api_client("deployer"), "empty", b"")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not ModelVersion.objects.exists()


def test_invalid_model_name_is_refused(api_client):
    response = _upload(api_client("deployer"), "Bad_Name", b"\x80\x04N.")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "invalid model name" in response.json()["error"]


def _ready_version(user, name="m", number=1) -> ModelVersion:
    """A version marked ready directly: these tests are about approval rules, not loading."""
    from models_app.models import RegisteredModel

    model, _ = RegisteredModel.objects.get_or_create(name=name)
    return ModelVersion.objects.create(
        model=model,
        number=number,
        artifact_sha256=f"{number:064d}",
        artifact_size=1,
        status="ready",
        uploaded_by=user,
    )


def test_uploader_cannot_approve_own_version(api_client):
    client = api_client("approver")
    version = _ready_version(client.user)
    response = client.post("/api/v1/models/m/versions/1/approval", {"decision": "approve"})
    assert response.status_code == HTTPStatus.FORBIDDEN
    version.refresh_from_db()
    assert version.approval == "pending"


def test_another_approver_approves_and_it_is_audited(api_client, make_user):
    _ready_version(make_user("deployer"))
    client = api_client("approver")
    response = client.post(
        "/api/v1/models/m/versions/1/approval", {"decision": "approve", "comment": "looks good"}
    )
    assert response.status_code == HTTPStatus.OK
    assert response.json()["approval"] == "approved"
    event = AuditEvent.objects.get(action="model_version.approved")
    assert event.actor_name == client.user.username
    assert event.details["comment"] == "looks good"


def test_deployer_cannot_approve(api_client, make_user):
    _ready_version(make_user("deployer"))
    response = api_client("deployer").post(
        "/api/v1/models/m/versions/1/approval", {"decision": "approve"}
    )
    assert response.status_code == HTTPStatus.FORBIDDEN


def test_production_alias_needs_an_approved_version(api_client, make_user):
    uploader = make_user("deployer")
    version = _ready_version(uploader)
    client = api_client("deployer")
    refused = client.put("/api/v1/models/m/aliases/production", {"version": 1})
    assert refused.status_code == HTTPStatus.CONFLICT
    assert "approved" in refused.json()["error"]
    staging = client.put("/api/v1/models/m/aliases/staging", {"version": 1})
    assert staging.status_code == HTTPStatus.OK
    services.model_version_approve(
        version=version, user=make_user("approver"), actor=Actor.system(), approve=True
    )
    ok = client.put("/api/v1/models/m/aliases/production", {"version": 1})
    assert ok.status_code == HTTPStatus.OK
    assert ModelAlias.objects.get(name="production").version == version
    moved = AuditEvent.objects.filter(action="model_alias.set").count()
    assert moved == 2


def test_moving_an_alias_records_from_and_to(api_client, make_user):
    user = make_user("deployer")
    _ready_version(user, number=1)
    _ready_version(user, number=2)
    client = api_client("deployer")
    client.put("/api/v1/models/m/aliases/staging", {"version": 1})
    client.put("/api/v1/models/m/aliases/staging", {"version": 2})
    last = AuditEvent.objects.filter(action="model_alias.set").order_by("-id").first()
    assert last.details == {"alias": "staging", "from_version": 1, "to_version": 2}
    assert ModelAlias.objects.get(name="staging").version.number == 2


@pytest.mark.security
def test_disk_full_while_uploading_gives_a_clean_error_and_no_half_written_version(
    settings, api_client, tmp_path
):
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (the test command runs as root)")
    store = tmp_path / "small-store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(store)], check=True)
    try:
        settings.PORTAL_ARTIFACT_DIR = store
        response = _upload(api_client("deployer"), "full", b"\x80\x04" + os.urandom(3 * 1024**2))
        assert response.status_code == HTTPStatus.BAD_REQUEST
        assert "full" in response.json()["error"]
        assert not ModelVersion.objects.exists()
        leftovers = [p for p in store.rglob("*") if p.is_file()]
        assert leftovers == []
    finally:
        subprocess.run(["umount", str(store)], check=True)
