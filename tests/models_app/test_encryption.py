"""Artifacts encrypted at rest (#21): what is on disk, keys, rotation, legacy plaintext.

Real PostgreSQL (the test database), the real `cryptography` AES-GCM, real fixture models;
the model server's loader is exercised in-process and as a subprocess. The Docker half
(image layers, replicas with and without their key) is in
tests/deployments_app/test_encryption_runtime.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import stat
import subprocess
import sys
from http import HTTPStatus
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from models_app import storage
from models_app.checks import artifact_key_report, check_artifact_encryption
from models_app.keyprovider import EnvKeyProvider, master_key_id
from models_app.models import ModelVersion, RegisteredModel
from models_app.validation import artifact_cipher as cipher
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "deployments_app" / "model_server" / "server.py"
KEY_A = secrets.token_hex(32)
KEY_B = secrets.token_hex(32)


@pytest.fixture
def key_a(settings):
    settings.PORTAL_ARTIFACT_KEY = KEY_A
    settings.PORTAL_ARTIFACT_KEY_PREVIOUS = ""
    return settings


def _fixture(name: str) -> bytes:
    return (FIXTURE_DIR / name).read_bytes()


def _windows(data: bytes, size: int = 48, count: int = 16) -> list[bytes]:
    """Plaintext fragments spread over the file: none may appear in what is stored."""
    step = max(1, (len(data) - size) // count)
    return [data[i : i + size] for i in range(0, len(data) - size, step)][:count]


# --------------------------------------------------------------------------- on disk


@pytest.mark.django_db
def test_the_bytes_on_disk_are_not_the_model_and_read_back_exactly(key_a):
    data = _fixture("spam_pipeline.joblib")
    # Small pieces: the stream is sealed as it arrives, in 1 MiB chunks, whatever the input.
    stored = storage.artifact_store(data[i : i + 7000] for i in range(0, len(data), 7000))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()  # the name is the plaintext's hash
    raw = stored.path.read_bytes()
    assert raw.startswith(cipher.MAGIC) and raw != data
    chunks = -(-len(data) // storage.CHUNK)
    assert len(raw) == cipher.HEADER_SIZE + len(data) + chunks * cipher.TAG
    assert not [w for w in _windows(data) if w in raw]
    assert stat.S_IMODE(stored.path.stat().st_mode) == 0o440
    assert storage.artifact_read(stored.sha256) == data
    assert b"".join(storage.artifact_iter(stored.sha256)) == data
    header = storage.artifact_header(stored.sha256)
    assert header.key_id == master_key_id(bytes.fromhex(KEY_A))
    # Deduplication still works on the plaintext: the same bytes again keep the same file.
    again = storage.artifact_store([data])
    assert again.path == stored.path and again.path.read_bytes() == raw
    assert not list((storage.artifact_root() / "tmp").iterdir())


@pytest.mark.django_db
def test_a_large_upload_streams_in_many_chunks_and_every_boundary_round_trips(key_a):
    for size in (1, storage.CHUNK - 1, storage.CHUNK, storage.CHUNK + 1, 3 * storage.CHUNK):
        data = os.urandom(size)
        stored = storage.artifact_store([data])
        assert storage.artifact_read(stored.sha256) == data, size


@pytest.mark.django_db
def test_an_altered_or_truncated_artifact_is_refused_not_returned(key_a):
    data = os.urandom(2 * storage.CHUNK + 100)
    stored = storage.artifact_store([data])
    path = stored.path
    original = path.read_bytes()
    os.chmod(path, 0o640)
    flipped = bytearray(original)
    flipped[cipher.HEADER_SIZE + storage.CHUNK + 5] ^= 1
    path.write_bytes(bytes(flipped))
    with pytest.raises(storage.ArtifactUnreadable, match="does not decrypt"):
        storage.artifact_read(stored.sha256)
    # Dropping the last chunk whole (a chunk boundary) is caught too: STREAM's last flag.
    path.write_bytes(original[: cipher.HEADER_SIZE + 2 * (storage.CHUNK + cipher.TAG)])
    with pytest.raises(storage.ArtifactUnreadable):
        storage.artifact_read(stored.sha256)
    # A valid artifact moved under another name fails its hash check at the end.
    other = storage.artifact_store([b"another model"])
    os.chmod(other.path, 0o640)
    other.path.write_bytes(original)
    with pytest.raises(storage.ArtifactUnreadable, match="does not match its hash"):
        storage.artifact_read(other.sha256)


@pytest.mark.django_db
def test_the_plaintext_file_for_the_sandbox_is_private_and_removed(key_a):
    stored = storage.artifact_store([b"\x80\x04N."])
    with storage.artifact_plaintext_file(stored.sha256) as path:
        assert path.read_bytes() == b"\x80\x04N."
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not path.is_relative_to(storage.artifact_root())
    assert not path.exists() and not path.parent.exists()


# --------------------------------------------------------------------------- keys


@pytest.mark.django_db
def test_a_wrong_key_is_a_clear_error_everywhere(key_a, settings):
    stored = storage.artifact_store([b"\x80\x04N."])
    settings.PORTAL_ARTIFACT_KEY = KEY_B
    with pytest.raises(storage.ArtifactUnreadable, match="which is not configured"):
        storage.artifact_read(stored.sha256)
    with pytest.raises(storage.ArtifactUnreadable, match="not configured"):
        storage.artifact_data_key(stored.sha256)
    errors = check_artifact_encryption()
    assert [e.id for e in errors] == ["models_app.E001"]
    assert "wrong PORTAL_ARTIFACT_KEY" in errors[0].msg
    assert master_key_id(bytes.fromhex(KEY_A)) in errors[0].msg
    settings.PORTAL_ARTIFACT_KEY = KEY_A
    assert check_artifact_encryption() == []


def _manage(args: list[str], env_extra: dict[str, str], tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTAL_"))}
    env.update(
        {
            "PORTAL_DATA_DIR": str(tmp_path / "data"),
            "PORTAL_ARTIFACT_DIR": str(tmp_path / "artifacts"),
            **env_extra,
        }
    )
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_ALLOWED_HOSTS": "portal.example",
    "DJANGO_SECRET_KEY": "s" * 60,
    "PORTAL_AUDIT_KEY": "a" * 40,
}


def test_production_without_a_key_makes_one_and_a_malformed_one_stops(tmp_path):
    made = _manage(["check"], PRODUCTION, tmp_path)
    assert made.returncode == 0, made.stderr
    key_file = tmp_path / "data" / "artifact.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    bad = _manage(["check"], {**PRODUCTION, "PORTAL_ARTIFACT_KEY": "too-short"}, tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("error: PORTAL_ARTIFACT_KEY must be 32 random bytes")
    assert "Traceback" not in bad.stderr
    absent = _manage(
        ["check"], {**PRODUCTION, "PORTAL_ARTIFACT_KEY_FILE": str(tmp_path / "nope")}, tmp_path
    )
    assert absent.returncode == 2 and "cannot be read" in absent.stderr
    assert not (tmp_path / "nope").exists()  # a named file is never made up
    ok = _manage(["check"], {**PRODUCTION, "PORTAL_ARTIFACT_KEY": KEY_A}, tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_local_mode_makes_a_key_file_once_with_mode_0600(tmp_path):
    first = _manage(["check"], {}, tmp_path)
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "data" / "artifact.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    assert len(bytes.fromhex(key.strip())) == 32
    assert _manage(["check"], {}, tmp_path).returncode == 0
    assert key_file.read_text() == key


def test_manage_check_names_the_wrong_key_and_stops(tmp_path):
    """A store written under one key, a portal started with another: `check` (and with it
    runportal) refuses to start and says which key the artifacts need."""
    setup = "from models_app.storage import artifact_store; artifact_store([b'model bytes'])"
    made = _manage(["shell", "-c", setup], {"PORTAL_ARTIFACT_KEY": KEY_A}, tmp_path)
    assert made.returncode == 0, made.stderr
    wrong = _manage(["check"], {"PORTAL_ARTIFACT_KEY": KEY_B}, tmp_path)
    assert wrong.returncode == 1
    assert "models_app.E001" in wrong.stderr and "wrong PORTAL_ARTIFACT_KEY" in wrong.stderr
    assert master_key_id(bytes.fromhex(KEY_A)) in wrong.stderr
    during_rotation = _manage(
        ["check"], {"PORTAL_ARTIFACT_KEY": KEY_B, "PORTAL_ARTIFACT_KEY_PREVIOUS": KEY_A}, tmp_path
    )
    assert during_rotation.returncode == 0, during_rotation.stderr


def test_a_worker_that_cannot_open_the_store_refuses_to_start(tmp_path):
    """A Celery worker runs the same checks before it takes a task: with a wrong key it exits
    at once naming the key the artifacts need, rather than failing every validation later
    with "did not finish"; so does a worker host that was given no key (it makes its own,
    which is not the store's)."""
    setup = "from models_app.storage import artifact_store; artifact_store([b'model bytes'])"
    made = _manage(["shell", "-c", setup], {"PORTAL_ARTIFACT_KEY": KEY_A}, tmp_path)
    assert made.returncode == 0, made.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTAL_"))}
    env |= {"PORTAL_DATA_DIR": str(tmp_path / "data"),
            "PORTAL_ARTIFACT_DIR": str(tmp_path / "artifacts")}  # fmt: skip
    worker = [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool", "solo",
              "--queues", f"never-{os.getpid()}", "--without-mingle"]  # fmt: skip
    wrong = subprocess.run(
        worker, cwd=REPO, env=env | {"PORTAL_ARTIFACT_KEY": KEY_B},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    assert "error: " in wrong.stderr and "wrong PORTAL_ARTIFACT_KEY" in wrong.stderr
    assert master_key_id(bytes.fromhex(KEY_A)) in wrong.stderr
    assert "Traceback" not in wrong.stderr
    env["PORTAL_DATA_DIR"] = str(tmp_path / "worker-host")  # another host: no key file yet
    missing = subprocess.run(
        worker, cwd=REPO, env=env | PRODUCTION, capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "wrong PORTAL_ARTIFACT_KEY" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.django_db
def test_readiness_reports_the_key_state(key_a, settings, client):
    storage.artifact_store([b"\x80\x04N."])
    from models_app.checks import readiness

    ok, detail = readiness()
    assert ok and master_key_id(bytes.fromhex(KEY_A)) in detail
    settings.PORTAL_ARTIFACT_KEY = KEY_B
    ok, detail = readiness()
    assert not ok and "not configured" in detail


# --------------------------------------------------------------------------- rotation


@pytest.mark.django_db
def test_rotation_rewraps_headers_only_keeps_everything_readable_and_is_audited(key_a, settings):
    blobs = [os.urandom(storage.CHUNK + 10), _fixture("house_price_linreg.pkl")]
    stored = [storage.artifact_store([b]) for b in blobs]
    bodies = {s.sha256: s.path.read_bytes()[cipher.HEADER_SIZE :] for s in stored}
    keys = {s.sha256: storage.artifact_data_key(s.sha256) for s in stored}
    settings.PORTAL_ARTIFACT_KEY = KEY_B
    settings.PORTAL_ARTIFACT_KEY_PREVIOUS = KEY_A
    out = io.StringIO()
    call_command("rotate_artifact_key", stdout=out)
    assert "2 artifact(s) rewrapped, 0 already under it" in out.getvalue()
    settings.PORTAL_ARTIFACT_KEY_PREVIOUS = ""  # the old key may go now
    new_id = master_key_id(bytes.fromhex(KEY_B))
    for s, blob in zip(stored, blobs, strict=True):
        assert storage.artifact_header(s.sha256).key_id == new_id
        assert s.path.read_bytes()[cipher.HEADER_SIZE :] == bodies[s.sha256]  # body untouched
        assert storage.artifact_data_key(s.sha256) == keys[s.sha256]  # images stay valid
        assert storage.artifact_read(s.sha256) == blob
        assert stat.S_IMODE(s.path.stat().st_mode) == 0o440
    event = AuditEvent.objects.get(action="artifacts.key_rotated")
    assert event.details["rewrapped"] == 2 and event.details["key_id"] == new_id
    assert event.details["from_keys"] == {master_key_id(bytes.fromhex(KEY_A)): 2}
    assert check_artifact_encryption() == []
    again = io.StringIO()
    call_command("rotate_artifact_key", stdout=again)
    assert "0 artifact(s) rewrapped, 2 already under it" in again.getvalue()
    assert not (storage.artifact_root() / "rewrap-journal").exists() or not list(
        (storage.artifact_root() / "rewrap-journal").iterdir()
    )


@pytest.mark.django_db
def test_rotation_takes_the_old_key_from_a_file_and_fails_clearly_without_it(
    key_a, settings, tmp_path
):
    stored = storage.artifact_store([b"\x80\x04N."])
    settings.PORTAL_ARTIFACT_KEY = KEY_B
    with pytest.raises(CommandError, match="1 artifact"):
        call_command("rotate_artifact_key", stdout=io.StringIO(), stderr=io.StringIO())
    assert AuditEvent.objects.get(action="artifacts.key_rotated").outcome == "failure"
    old = tmp_path / "old.key"
    old.write_text(KEY_A + "\n")
    call_command("rotate_artifact_key", "--previous-key-file", str(old), stdout=io.StringIO())
    assert storage.artifact_read(stored.sha256) == b"\x80\x04N."


@pytest.mark.django_db
def test_a_header_torn_by_a_killed_rotation_is_restored_from_the_journal(key_a, settings):
    stored = storage.artifact_store([b"\x80\x04N."])
    old_header = stored.path.read_bytes()[: cipher.HEADER_SIZE]
    journal = storage.artifact_root() / "rewrap-journal"
    journal.mkdir()
    (journal / stored.sha256).write_bytes(old_header)
    storage._pwrite_header(stored.path, cipher.MAGIC + b"\xff" * (cipher.HEADER_SIZE - 8))
    settings.PORTAL_ARTIFACT_KEY = KEY_B
    settings.PORTAL_ARTIFACT_KEY_PREVIOUS = KEY_A
    out = io.StringIO()
    call_command("rotate_artifact_key", stdout=out)
    assert f"restored the journalled header of {stored.sha256[:12]}" in out.getvalue()
    assert storage.artifact_read(stored.sha256) == b"\x80\x04N."
    assert not list(journal.iterdir())


@pytest.mark.django_db
def test_a_custom_key_provider_is_used_through_its_dotted_path(key_a, settings):
    settings.PORTAL_ARTIFACT_KEY_PROVIDER = "tests.models_app.test_encryption.FakeKms"
    stored = storage.artifact_store([b"\x80\x04N."])
    assert storage.artifact_header(stored.sha256).key_id == "kms:test-key"
    assert storage.artifact_read(stored.sha256) == b"\x80\x04N."


class FakeKms(EnvKeyProvider):
    """What a KMS adapter looks like: its own key ids, the same four operations."""

    @classmethod
    def from_settings(cls):
        return cls(bytes.fromhex(KEY_B))

    @property
    def key_id(self) -> str:
        return "kms:test-key"

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        _id, wrapped = super().wrap(data_key)
        return "kms:test-key", wrapped

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        return super().unwrap(master_key_id(bytes.fromhex(KEY_B)), wrapped)

    def knows(self, key_id: str) -> bool:
        return key_id == "kms:test-key"


# --------------------------------------------------------------------------- legacy plaintext


@pytest.mark.django_db
def test_plaintext_from_before_is_refused_reported_and_encrypted_by_the_command(key_a):
    data = _fixture("house_price_linreg.pkl")
    sha = hashlib.sha256(data).hexdigest()
    legacy = storage.artifact_path(sha)
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(data)  # what the store held before this change
    with pytest.raises(storage.ArtifactUnreadable, match="encrypt_artifacts"):
        storage.artifact_read(sha)
    assert [e.id for e in check_artifact_encryption()] == ["models_app.E003"]
    out = io.StringIO()
    call_command("encrypt_artifacts", stdout=out)
    assert "1 artifact(s) encrypted, 0 already encrypted" in out.getvalue()
    assert legacy.read_bytes().startswith(cipher.MAGIC)
    assert not [w for w in _windows(data) if w in legacy.read_bytes()]
    assert storage.artifact_read(sha) == data
    assert artifact_key_report().ok
    event = AuditEvent.objects.get(action="artifacts.encrypted")
    assert event.details["encrypted"] == 1 and event.details["artifacts"] == [sha[:12]]
    out = io.StringIO()
    call_command("encrypt_artifacts", stdout=out)
    assert "0 artifact(s) encrypted, 1 already encrypted" in out.getvalue()
    assert AuditEvent.objects.filter(action="artifacts.encrypted").count() == 1


@pytest.mark.django_db
def test_a_plaintext_file_whose_content_is_not_its_name_is_left_alone(key_a):
    sha = "ab" * 32
    legacy = storage.artifact_path(sha)
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"not what the name says")
    with pytest.raises(CommandError):
        call_command("encrypt_artifacts", stdout=io.StringIO(), stderr=io.StringIO())
    assert legacy.read_bytes() == b"not what the name says"
    assert [s for s in storage.iter_artifact_shas()] == [sha]


# --------------------------------------------------------------------------- downloads


def _version(data: bytes, fmt: str = "pickle") -> ModelVersion:
    stored = storage.artifact_store([data])
    model, _ = RegisteredModel.objects.get_or_create(name="enc")
    return ModelVersion.objects.create(
        model=model,
        number=model.versions.count() + 1,
        status="ready",
        format=fmt,
        artifact_sha256=stored.sha256,
        artifact_size=stored.size,
    )


@pytest.mark.django_db
def test_downloads_decrypt_for_those_allowed_and_are_audited(key_a, api_client, client, make_user):
    data = _fixture("house_price_linreg.pkl")
    _version(data)
    response = api_client("viewer").get("/api/v1/models/enc/versions/1/download")
    assert response.status_code == HTTPStatus.OK
    assert b"".join(response.streaming_content) == data
    assert response["Content-Length"] == str(len(data))
    assert api_client(None).get("/api/v1/models/enc/versions/1/download").status_code in (
        HTTPStatus.UNAUTHORIZED,
        HTTPStatus.FORBIDDEN,
    )
    client.force_login(make_user("viewer"))
    page = client.get("/models/enc/versions/1/download")
    assert page.status_code == HTTPStatus.OK and b"".join(page.streaming_content) == data
    assert AuditEvent.objects.filter(action="model_version.downloaded").count() == 2


@pytest.mark.django_db
def test_a_download_the_portal_cannot_decrypt_is_a_503_with_a_reason_and_no_audit(
    key_a, api_client, settings, client, make_user
):
    _version(b"\x80\x04N.")
    settings.PORTAL_ARTIFACT_KEY = KEY_B
    response = api_client("viewer").get("/api/v1/models/enc/versions/1/download")
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert "not configured" in response.json()["error"]
    client.force_login(make_user("viewer"))
    page = client.get("/models/enc/versions/1/download", follow=True)
    assert page.status_code == HTTPStatus.OK
    assert "not configured" in page.content.decode()
    assert not AuditEvent.objects.filter(action="model_version.downloaded").exists()


# --------------------------------------------------------------------------- the model server


def _server_module():
    sys.path.insert(0, str(SERVER.parent))
    try:
        import server  # deployments_app/model_server/server.py, as a replica imports it
    finally:
        sys.path.remove(str(SERVER.parent))
    return server


@pytest.mark.django_db
def test_the_model_server_decrypts_in_memory_with_its_key_file_only(key_a, manifest, tmp_path):
    entry = manifest["spam_pipeline.joblib"]
    stored = storage.artifact_store([_fixture("spam_pipeline.joblib")])
    key_file = tmp_path / "model.key"
    key_file.write_text(storage.artifact_data_key(stored.sha256).hex())
    server = _server_module()
    model = server.load_model(str(stored.path), "joblib", str(key_file))
    import pandas as pd

    frame = pd.DataFrame(entry["input_example"], columns=entry["columns"])
    assert model.predict(frame).tolist() == entry["expected_predict"]
    with pytest.raises(server.ModelKeyError, match="no key was given"):
        server.load_model(str(stored.path), "joblib", None)
    key_file.write_text(os.urandom(32).hex())
    with pytest.raises(server.ModelKeyError, match="does not open"):
        server.load_model(str(stored.path), "joblib", str(key_file))
    with pytest.raises(server.ModelKeyError, match="not encrypted"):
        server.load_model(str(FIXTURE_DIR / "spam_pipeline.joblib"), "joblib", str(key_file))
    # The restricted loader still governs a model decrypted into memory.
    import pickle

    hostile = storage.artifact_store([pickle.dumps(os.system, protocol=4)])
    key_file.write_text(storage.artifact_data_key(hostile.sha256).hex())
    with pytest.raises(Exception, match="refused by the loader|not allowed|forbid"):
        server.load_model(str(hostile.path), "pickle", str(key_file))


@pytest.mark.django_db
def test_a_server_started_without_its_key_exits_with_a_clear_line(key_a, tmp_path):
    stored = storage.artifact_store([_fixture("spam_pipeline.joblib")])
    result = subprocess.run(
        [sys.executable, str(SERVER), "--model", str(stored.path), "--format", "joblib",
         "--port", "0", "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "MODEL_KEY_FILE": ""},
    )  # fmt: skip
    assert result.returncode == 3
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["event"] == "load_failed" and "no key was given" in line["error"]


@pytest.mark.django_db
@pytest.mark.slow
def test_after_a_rotation_a_version_still_validates_from_its_encrypted_artifact(
    key_a, settings, manifest, make_user
):
    """Validation reads the plaintext through a private temporary file: under the new key
    the version goes through the whole pipeline (scan, sandboxed load, smoke test)."""
    from models_app.services import model_version_upload, model_version_validate
    from portal.audit import Actor

    entry = manifest["house_price_linreg.pkl"]
    data = _fixture("house_price_linreg.pkl")
    version, created = model_version_upload(
        model_name="enc-validate",
        chunks=[data],
        actor=Actor.system("test"),
        user=make_user("deployer"),
        filename="house_price_linreg.pkl",
        example_text=json.dumps(entry["input_example"]),
    )
    assert created
    settings.PORTAL_ARTIFACT_KEY, settings.PORTAL_ARTIFACT_KEY_PREVIOUS = KEY_B, KEY_A
    call_command("rotate_artifact_key", stdout=io.StringIO())
    settings.PORTAL_ARTIFACT_KEY_PREVIOUS = ""
    done = model_version_validate(version_id=version.pk)
    assert done.status == "ready", done.rejection_reason
    assert done.example_output  # the smoke test ran on the decrypted model
