"""Production mode fails fast without secrets and passes `check --deploy` with them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTAL_"))}
    env.update({"PORTAL_DATA_DIR": str(tmp_path), **env_extra})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_refuses_to_start_without_secret_key(tmp_path):
    result = _run(
        ["check"], {"DJANGO_DEBUG": "false", "DJANGO_ALLOWED_HOSTS": "portal.example"}, tmp_path
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_production_refuses_to_start_without_allowed_hosts(tmp_path):
    result = _run(["check"], {"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "x" * 60}, tmp_path)
    assert result.returncode != 0
    assert "DJANGO_ALLOWED_HOSTS" in result.stderr


@pytest.mark.parametrize("secret", ["short", ""])
def test_production_rejects_weak_secret_keys(tmp_path, secret):
    result = _run(
        ["check"],
        {
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": secret,
            "DJANGO_ALLOWED_HOSTS": "portal.example",
        },
        tmp_path,
    )
    assert result.returncode != 0


def test_check_deploy_passes_in_production_mode(tmp_path):
    result = _run(
        ["check", "--deploy", "--fail-level", "WARNING"],
        {
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": "k3y-" + "a1B2c3D4e5F6g7H8i9J0" * 3,
            "DJANGO_ALLOWED_HOSTS": "portal.example",
            "PORTAL_AUDIT_KEY": "audit-" + "z9Y8x7W6v5" * 4,
        },
        tmp_path,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


@pytest.mark.parametrize("audit_key", ["", "short"])
def test_production_refuses_to_start_without_an_audit_key(tmp_path, audit_key):
    env = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "k3y-" + "a1B2c3D4e5F6g7H8i9J0" * 3,
        "DJANGO_ALLOWED_HOSTS": "portal.example",
        "PORTAL_AUDIT_KEY": audit_key,
    }
    result = _run(["check"], env, tmp_path)
    assert result.returncode != 0
    assert "PORTAL_AUDIT_KEY" in result.stderr


@pytest.mark.parametrize("level", ["full", "Namespaces"])
def test_an_unknown_minimum_isolation_is_refused(tmp_path, level):
    result = _run(["check"], {"PORTAL_SANDBOX_MIN_ISOLATION": level}, tmp_path)
    assert result.returncode != 0
    assert "PORTAL_SANDBOX_MIN_ISOLATION" in result.stderr


@pytest.mark.parametrize("instance", ["Prod", "a_b", "x" * 31, "-lead"])
def test_an_instance_name_that_cannot_name_containers_is_refused(tmp_path, instance):
    result = _run(["check"], {"PORTAL_INSTANCE": instance}, tmp_path)
    assert result.returncode != 0
    assert "PORTAL_INSTANCE" in result.stderr
