"""Production mode fails fast without secrets and passes `check --deploy` with them."""

from __future__ import annotations

import json
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


def _settings(env_extra: dict[str, str], tmp_path: Path) -> dict:
    names = [
        "DEBUG",
        "ALLOWED_HOSTS",
        "SECRET_KEY",
        "SECURE_SSL_REDIRECT",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
    ]
    code = (
        "import json; from django.conf import settings as s; "
        f"print(json.dumps({{n: getattr(s, n) for n in {names!r}}}))"
    )
    result = _run(["shell", "-c", code], env_extra, tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_with_no_settings_debug_is_off_and_only_local_names_over_http_are_served(tmp_path):
    """A fresh clone's `make run`: production mode, a key made once (0600), local names,
    plain http (no redirect to https, cookies a browser sends back over http)."""
    first = _settings({}, tmp_path)
    key_file = tmp_path / "secret.key"
    assert first["DEBUG"] is False
    assert first["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert first["SECRET_KEY"] == key_file.read_text().strip() and len(first["SECRET_KEY"]) >= 50
    assert first["SECURE_SSL_REDIRECT"] is False and first["SECURE_HSTS_SECONDS"] == 0
    assert first["SESSION_COOKIE_SECURE"] is first["CSRF_COOKIE_SECURE"] is False
    assert _settings({}, tmp_path)["SECRET_KEY"] == first["SECRET_KEY"]  # made once, kept


def test_debug_is_opt_in(tmp_path):
    assert _settings({"DJANGO_DEBUG": "true"}, tmp_path)["DEBUG"] is True


def test_named_hosts_get_https_redirect_secure_cookies_and_hsts(tmp_path):
    served = _settings(
        {
            "DJANGO_SECRET_KEY": "k3y-" + "a1B2c3D4e5F6g7H8i9J0" * 3,
            "DJANGO_ALLOWED_HOSTS": "portal.example",
            "PORTAL_AUDIT_KEY": "audit-" + "z9Y8x7W6v5" * 4,
        },
        tmp_path,
    )
    assert served["ALLOWED_HOSTS"] == ["portal.example"]
    assert served["SECURE_SSL_REDIRECT"] is True and served["SECURE_HSTS_SECONDS"] > 0
    assert served["SESSION_COOKIE_SECURE"] is served["CSRF_COOKIE_SECURE"] is True
    assert not (tmp_path / "secret.key").exists()


@pytest.mark.parametrize("variable", ["DJANGO_SECRET_KEY", "PORTAL_AUDIT_KEY"])
def test_local_mode_refuses_an_explicitly_weak_key(tmp_path, variable):
    result = _run(["check"], {variable: "short"}, tmp_path)
    assert result.returncode != 0
    assert variable in result.stderr


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


def test_production_refuses_a_weak_audit_key(tmp_path):
    env = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "k3y-" + "a1B2c3D4e5F6g7H8i9J0" * 3,
        "DJANGO_ALLOWED_HOSTS": "portal.example",
        "PORTAL_AUDIT_KEY": "short",
    }
    result = _run(["check"], env, tmp_path)
    assert result.returncode != 0
    assert "PORTAL_AUDIT_KEY" in result.stderr


@pytest.mark.parametrize("command", [["check", "--deploy", "--fail-level", "WARNING"],
                                     ["collectstatic", "--noinput", "--dry-run"]])  # fmt: skip
def test_production_without_an_audit_key_uses_its_key_file(tmp_path, command):
    """Secret key and hosts only (no audit or artifact key): it starts; each key is made once
    in its file when first needed."""
    env = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "k3y-" + "a1B2c3D4e5F6g7H8i9J0" * 3,
        "DJANGO_ALLOWED_HOSTS": "portal.example",
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
    }
    result = _run(command, env, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    if command[0] == "check":  # the system check opens the artifact key (made now, 0600)
        assert (tmp_path / "artifact.key").stat().st_mode & 0o777 == 0o600


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
