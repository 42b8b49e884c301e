"""The client library without a portal: URIs, configuration, errors, exit codes (#20)."""

from __future__ import annotations

import json

import httpx
import pytest
from portal_client import PortalClient, PortalError, parse_uri
from portal_client.cli import exit_code, main


def test_model_uris_parse_versions_and_aliases():
    assert parse_uri("portal:/house/3").version == 3
    assert parse_uri("portal:/house@production").alias == "production"
    with pytest.raises(ValueError):
        parse_uri("portal:/house")
    with pytest.raises(ValueError):
        parse_uri("s3://bucket/house")


def test_url_and_token_come_from_the_environment_then_the_config_file(monkeypatch, tmp_path):
    monkeypatch.delenv("PORTAL_URL", raising=False)
    monkeypatch.delenv("PORTAL_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(PortalError):
        PortalClient()
    (tmp_path / "model-portal").mkdir()
    (tmp_path / "model-portal" / "config.json").write_text(
        json.dumps({"url": "http://cfg:1/", "token": "pt_a_b"})
    )
    client = PortalClient()
    assert client.url == "http://cfg:1"
    assert client._http.headers["Authorization"] == "Bearer pt_a_b"
    assert "pt_a_b" not in repr(client)
    monkeypatch.setenv("PORTAL_URL", "http://env:2")
    assert PortalClient().url == "http://env:2"


def test_refusals_carry_status_and_the_portals_message():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer pt_x_y"
        return httpx.Response(409, json={"error": "version 1 is not approved"})

    client = PortalClient("http://p", "pt_x_y", transport=httpx.MockTransport(handler))
    with pytest.raises(PortalError) as refused:
        client.deploy("d", "m", 1)
    assert refused.value.status == 409
    assert refused.value.message == "version 1 is not approved"


def test_alias_resolution_reads_the_models_aliases():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/models/m":
            return httpx.Response(
                200, json={"name": "m", "aliases": [{"name": "prod", "version": 2}]}
            )
        assert request.url.path == "/api/v1/models/m/versions/2"
        return httpx.Response(200, json={"model": "m", "number": 2})

    client = PortalClient("http://p", "t", transport=httpx.MockTransport(handler))
    assert client.resolve("portal:/m@prod")["number"] == 2
    with pytest.raises(PortalError) as missing:
        client.resolve("portal:/m@staging")
    assert missing.value.status == 404


@pytest.mark.parametrize(
    "error,code",
    [
        (PortalError("x", status=404), 2),
        (PortalError("x", status=403), 3),
        (PortalError("x", status=409), 3),
        (PortalError("x", status=503), 4),
        (PortalError("unreachable"), 4),
        (PortalError("invalid", body={"status": "invalid"}), 3),
    ],
)
def test_exit_codes_are_stable(error, code):
    assert exit_code(error) == code


def test_cli_usage_errors_exit_1(monkeypatch):
    monkeypatch.setenv("PORTAL_URL", "http://127.0.0.1:9")
    assert main(["no-such-command"]) == 1
    assert main(["predict", "d", "--json", "{nope"]) == 1
    assert main(["--help"]) == 0


def test_bundle_flavors_and_wheels_are_query_parameters(tmp_path):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=b"tgz")

    client = PortalClient("http://p", "t", transport=httpx.MockTransport(handler))
    client.bundle("m", 2, tmp_path / "a.tar.gz")
    client.bundle("m", 2, tmp_path / "b.tar.gz", onnx=True)
    client.bundle("m", 2, tmp_path / "c.tar.gz", onnx=True, wheels=True)
    assert seen == [
        "http://p/api/v1/models/m/versions/2/bundle",
        "http://p/api/v1/models/m/versions/2/bundle?flavor=onnx",
        "http://p/api/v1/models/m/versions/2/bundle?flavor=onnx&wheels=1",
    ]
    assert (tmp_path / "c.tar.gz").read_bytes() == b"tgz"
