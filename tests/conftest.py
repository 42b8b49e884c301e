"""Shared fixtures: users per role, API clients, fixture model files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from tests.factories import UserFactory

FIXTURE_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "models"
if not FIXTURE_DIR.exists():  # CI lays shared/ beside the clone; a session has it at /work/shared
    FIXTURE_DIR = Path("/work/shared/fixtures/models")
ROLES = ("viewer", "deployer", "approver", "admin")


@pytest.fixture(autouse=True)
def _isolated_storage(settings, tmp_path):
    """Every test gets its own artifact store and upload dir; env and wheel caches are shared."""
    settings.PORTAL_ARTIFACT_DIR = tmp_path / "artifacts"
    settings.PORTAL_UPLOAD_TMP_DIR = tmp_path / "uploads"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    (tmp_path / "uploads").mkdir()
    (tmp_path / "artifacts").mkdir()


@pytest.fixture
def make_user(db):
    def _make(role: str | None = None, **kwargs):
        user = UserFactory(**kwargs)
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return _make


@pytest.fixture
def role_client(make_user):
    """`role_client("deployer")` -> a logged-in Django test client and its user."""
    from django.test import Client

    def _client(role: str | None):
        client = Client()
        user = make_user(role) if role else None
        if user:
            client.force_login(user)
        client.user = user
        return client

    return _client


@pytest.fixture
def api_client(make_user):
    def _client(role: str | None):
        client = APIClient()
        user = make_user(role) if role else None
        if user:
            client.force_authenticate(user)
        client.user = user
        return client

    return _client


@pytest.fixture(scope="session")
def manifest() -> dict[str, dict]:
    entries = json.loads((FIXTURE_DIR / "manifest.json").read_text())
    return {e["file"]: e for e in entries}


@pytest.fixture
def fixture_copy(tmp_path):
    """Copy a read-only fixture model into the test's folder."""

    def _copy(name: str) -> Path:
        target = tmp_path / "fixtures" / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(FIXTURE_DIR / name, target)
        target.chmod(0o644)
        return target

    return _copy
