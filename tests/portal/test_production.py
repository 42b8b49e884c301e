"""Production mode (debug off, the default): static files collect with the manifest storage,
and errors are answered by the portal's own pages, never Django's debug pages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from http import HTTPStatus
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PORTAL_"))}
    return {**env, "PORTAL_DATA_DIR": str(tmp_path / "var"), **extra}


def test_every_source_map_a_vendored_file_names_is_vendored_too():
    """The manifest storage rewrites sourceMappingURL comments and stops on a missing map."""
    for path in (ROOT / "static").rglob("*.js"):
        for ref in re.findall(r"sourceMappingURL=(\S+)", path.read_text(errors="replace")):
            assert (path.parent / ref).exists(), f"{path.relative_to(ROOT)} names {ref}"


@pytest.mark.slow
def test_collectstatic_with_the_production_storage_hashes_and_compresses(tmp_path):
    static_root = tmp_path / "static"
    env = _clean_env(tmp_path, DJANGO_STATIC_ROOT=str(static_root))
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    chart = manifest["vendor/chartjs/chart.umd.js"]
    assert re.fullmatch(r"vendor/chartjs/chart\.umd\.[0-9a-f]{12}\.js", chart)
    assert (static_root / chart).exists() and (static_root / f"{chart}.gz").exists()
    assert "css/portal.css" in manifest and "js/dashboard.js" in manifest


def test_a_setting_the_operator_must_fix_is_one_line_not_a_traceback(tmp_path):
    """Serving other hosts without a secret key stops every command (collectstatic, migrate,
    runportal) with what to set and exit status 2."""
    env = _clean_env(tmp_path, DJANGO_DEBUG="false", DJANGO_ALLOWED_HOSTS="portal.example.org")
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: DJANGO_SECRET_KEY must be set")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


@pytest.fixture
def prod(settings):
    settings.DEBUG = False
    settings.ROOT_URLCONF = "tests.portal.boom_urls"
    return Client(raise_request_exception=False)


def _is_debug_page(html: str) -> bool:
    return "Django tried these URL patterns" in html or "Traceback" in html or "DEBUG" in html


@pytest.mark.django_db
def test_unknown_page_is_the_portals_404_page(prod, role_client):
    for client in (prod, role_client("viewer")):
        response = client.get("/no/such/page/")
        assert response.status_code == HTTPStatus.NOT_FOUND
        html = response.content.decode()
        assert "There is nothing at this address" in html and not _is_debug_page(html)
        assert response["Content-Type"].startswith("text/html")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/no-such-thing", "/v2/no/such", "/api/v1/models/x/y/z"])
def test_unknown_api_path_is_a_json_404(prod, path):
    response = prod.get(path, HTTP_X_REQUEST_ID="req-404-test")
    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.json() == {"error": "not found", "request_id": "req-404-test"}


@pytest.mark.django_db
def test_a_failing_page_is_the_portals_500_page_with_the_request_id(prod):
    response = prod.get("/boom/", HTTP_X_REQUEST_ID="req-500-test")
    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    html = response.content.decode()
    assert "Something went wrong" in html and "req-500-test" in html
    assert "boom" not in html and not _is_debug_page(html)


@pytest.mark.django_db
def test_a_failing_api_call_is_a_json_500(prod):
    response = prod.get("/api/v1/boom", HTTP_X_REQUEST_ID="req-500-api")
    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    assert response.json() == {
        "error": "internal error: the portal logged it",
        "request_id": "req-500-api",
    }


@pytest.mark.django_db
def test_forbidden_is_the_portals_403_page_or_json(prod):
    page = prod.get("/forbidden/")
    assert page.status_code == HTTPStatus.FORBIDDEN
    assert "Your role does not allow this page" in page.content.decode()
    api = prod.get("/api/v1/forbidden")
    assert api.status_code == HTTPStatus.FORBIDDEN
    assert api.json()["error"] == "not allowed"
