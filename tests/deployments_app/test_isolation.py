"""Replicas are contained (issue 11, items 4 and 5), checked against the real thing: the
process runtime's namespaces read from /proc, a Docker container's network tried from inside
it, the model server's token refused and accepted over its real socket.

Everything a test creates carries this run's id and is removed in teardown: containers,
images, processes, socket directories; the fixture files are copied, never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import uuid
from http import HTTPStatus
from pathlib import Path

import pytest
from django.conf import settings

from deployments_app.models import Deployment, Replica
from deployments_app.runtimes.base import (
    BuildSpec,
    ReplicaError,
    ReplicaLimits,
    probe_health,
    replica_request,
    socket_path,
)
from deployments_app.services import SERVER_DIR
from models_app.models import ModelVersion, RegisteredModel
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR
from tests.deployments_app.test_runtimes import PINS_191  # the 1.9.1 fixtures' pins
from tests.services import require

RUN_ID = uuid.uuid4().hex[:10]
LABELS = {"portal.test": "1", "portal.test.run": RUN_ID}
TOKEN_KEY = "isolation-test-key-" + RUN_ID
SPAM = "spam_pipeline.joblib"
BODY = json.dumps({"instances": [["This is a spam email.", "spammer@example.com"]]}).encode()

pytestmark = pytest.mark.security


def _spec(tmp: Path, deployment: str) -> BuildSpec:
    entry = {e["file"]: e for e in json.loads((FIXTURE_DIR / "manifest.json").read_text())}[SPAM]
    artifact = tmp / SPAM
    shutil.copyfile(FIXTURE_DIR / SPAM, artifact)
    return BuildSpec(
        deployment=deployment,
        model=f"iso-spam-{RUN_ID}",
        version=1,
        artifact_path=artifact,
        artifact_sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
        fmt="joblib",
        requirements=PINS_191,
        columns=entry["columns"],
        base_image=os.environ.get("PORTAL_BASE_IMAGE", "portal-base:bookworm"),
        wheelhouse=Path(settings.PORTAL_WHEELHOUSE),
        server_dir=SERVER_DIR,
        extra_labels=LABELS,
    )


def _start(runtime, spec, build, index=0):
    status = runtime.start_replica(
        deployment=spec.deployment,
        index=index,
        build=build,
        spec=spec,
        limits=ReplicaLimits(memory_mb=1024),
        publish_host="127.0.0.1",
    )
    assert runtime.wait_healthy(status, 120), runtime.replica(status.name)
    return runtime.replica(status.name)


def _assert_answers_only_with_its_token(runtime, status, deployment: str) -> None:
    """The replica's own socket: no token or a wrong one gets 401, the right one 200, and a
    tokenless /health (Docker's HEALTHCHECK) says "ready" and nothing else."""
    token = runtime.replica_token(deployment)
    assert token and status.endpoint.startswith("unix:")
    ep = status.endpoint
    assert replica_request(ep, "POST", "/predict", body=BODY)[0] == HTTPStatus.UNAUTHORIZED
    assert replica_request(ep, "POST", "/predict", body=BODY, token="0" * 64)[0] == 401
    other = token[:-1] + ("1" if token.endswith("0") else "0")
    assert replica_request(ep, "GET", "/v2/models/x", token=other)[0] == 401
    assert replica_request(ep, "GET", "/health", token="wrong")[0] == HTTPStatus.UNAUTHORIZED
    assert replica_request(ep, "GET", "/health") == (200, b'{"status":"ready"}')
    code, body = replica_request(ep, "POST", "/predict", body=BODY, token=token)
    assert code == HTTPStatus.OK, body
    assert json.loads(body)["predictions"] == [1]  # as the fixture's manifest says
    assert probe_health(ep, token=token)
    assert not probe_health(ep, token=token[::-1])  # a replica of another key: replaced


def _other_uid_connect(path: str) -> str:
    """Try the replica's socket as an unprivileged uid on the host: the error it gets."""
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1]); print('connected')\n"
        "except OSError as e:\n    print(type(e).__name__)\n"
    )
    return subprocess.run(  # noqa: S603 - our own script
        ["/usr/bin/python3", "-I", "-c", script, path],
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd="/",
    ).stdout.strip()


def _socket_dir_is_private(status, uid: int) -> None:
    sock_dir = Path(socket_path(status.endpoint)).parent
    assert (sock_dir.stat().st_uid, sock_dir.stat().st_mode & 0o777) == (uid, 0o700)
    assert sock_dir.parent.stat().st_uid == 0 and sock_dir.parent.stat().st_mode & 0o077 == 0
    assert _other_uid_connect(socket_path(status.endpoint)) == "PermissionError"


# --------------------------------------------------------------------------- process runtime


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        pid = int(_proc_status(pid)["PPid"])
        chain.append(pid)
    return chain


def _server_pid(runtime_pid: int) -> int:
    """The model server's python among the replica's descendants (found by its cmdline)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            # Not the launcher (unshare, sh), whose arguments name the server too.
            if cmdline[3:4] == [b"/sandbox/in/server/server.py"] and runtime_pid in _ancestors(
                int(entry.name)
            ):
                return int(entry.name)
    raise AssertionError(f"no model server under pid {runtime_pid}")


@pytest.fixture(scope="module")
def process_replica(tmp_path_factory):
    from deployments_app.runtimes.process_runtime import ProcessRuntime

    require(os.geteuid() == 0, "root (the case where the process runtime must isolate)")
    root = tmp_path_factory.mktemp("iso-process")
    runtime = ProcessRuntime(state_root=root / "s", env_root=root / "e", token_key=TOKEN_KEY)
    spec = _spec(root, f"iso-p-{RUN_ID}")
    build = runtime.build(spec, log=lambda _line: None)
    try:
        yield runtime, spec, build, _start(runtime, spec, build)
    finally:
        for status in runtime.list_replicas():
            runtime.remove_replica(status.name)
        runtime.remove_image(build.ref)


@pytest.mark.slow
def test_process_replica_runs_unprivileged_in_its_own_namespaces(process_replica):
    runtime, _spec_, _build, status = process_replica
    state = json.loads((runtime.state_root / "replicas" / f"{status.name}.json").read_text())
    server = _server_pid(state["pid"])
    proc = _proc_status(server)
    uid = state["uid"]
    assert uid >= 300_000
    assert proc["Uid"].split() == [str(uid)] * 4 and proc["Gid"].split() == [str(uid)] * 4
    assert proc["Groups"] == ""
    assert int(proc["CapEff"], 16) == int(proc["CapPrm"], 16) == int(proc["CapBnd"], 16) == 0
    assert proc["NoNewPrivs"] == "1"
    for ns in ("net", "mnt", "pid"):
        assert os.readlink(f"/proc/{server}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # No network interface but the loopback (down): it can reach nothing, not even the host.
    net_dev = Path(f"/proc/{server}/net/dev").read_text().splitlines()[2:]
    interfaces = [line.split(":")[0].strip() for line in net_dev]
    assert interfaces == ["lo"]
    # Its root is the minimal read-only one: the portal's files and secrets are not in it.
    inside = Path(f"/proc/{server}/root")
    assert (inside / "sandbox/in/model.bin").is_file() and (inside / "usr/bin").is_dir()
    for host_path in ("work", "root/.ssh", "var", "home", "opt/model-portal"):
        assert not (inside / host_path).exists(), host_path


@pytest.mark.slow
def test_process_replica_answers_only_the_portal_with_its_token(process_replica):
    runtime, spec, _build, status = process_replica
    _assert_answers_only_with_its_token(runtime, status, spec.deployment)
    state = json.loads((runtime.state_root / "replicas" / f"{status.name}.json").read_text())
    _socket_dir_is_private(status, state["uid"])


@pytest.mark.slow
def test_process_runtime_refuses_to_run_a_replica_as_root_without_isolation(
    process_replica, monkeypatch
):
    from deployments_app.runtimes import process_runtime

    runtime, spec, build, _status = process_replica
    weak = {"mode": "userns", "notes": ["mount/pid/net namespaces unavailable as root: test"]}
    monkeypatch.setattr(process_runtime, "isolation", lambda: weak)
    before = {s.name for s in runtime.list_replicas()}
    with pytest.raises(ReplicaError, match="refusing to start .* as root without isolation"):
        runtime.start_replica(
            deployment=spec.deployment,
            index=7,
            build=build,
            spec=spec,
            limits=ReplicaLimits(),
            publish_host="127.0.0.1",
        )
    assert {s.name for s in runtime.list_replicas()} == before  # nothing was started


# --------------------------------------------------------------------------- docker runtime

CONNECT = """
import json, socket, sys
out = {}
for addr in sys.argv[2:]:
    try:
        socket.create_connection((addr, int(sys.argv[1])), timeout=3).close()
        out[addr] = "connected"
    except OSError as e:
        out[addr] = type(e).__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def docker_replica(tmp_path_factory):
    from deployments_app.runtimes.docker_runtime import DockerRuntime, client

    runtime = DockerRuntime(
        instance=f"iso-{RUN_ID[:6]}",
        state_root=tmp_path_factory.mktemp("iso-docker"),
        token_key=TOKEN_KEY,
    )
    require(runtime.ping(), "a reachable Docker engine")
    spec = _spec(tmp_path_factory.mktemp("iso-docker-spec"), f"iso-d-{RUN_ID}")
    try:
        build = runtime.build(spec, log=lambda _line: None)
        yield runtime, spec, build, _start(runtime, spec, build)
    finally:
        c = client(timeout=120)
        try:
            for container in c.containers.list(
                all=True, filters={"label": f"portal.test.run={RUN_ID}"}
            ):
                runtime._remove(container)
            for image in c.images.list(filters={"label": f"portal.test.run={RUN_ID}"}):
                with contextlib.suppress(Exception):
                    c.images.remove(image.id, force=True)
        finally:
            c.close()


@contextlib.contextmanager
def _host_listener():
    """A TCP listener on every host address: (port, peers that connected)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))  # noqa: S104 - the point: reachable from anything that can
    server.listen(16)
    server.settimeout(0.2)
    peers: list[str] = []
    done = threading.Event()

    def accept():
        while not done.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, addr = server.accept()
                peers.append(addr[0])
                conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], peers
    finally:
        done.set()
        thread.join(timeout=5)
        server.close()


def _host_addresses(gateway: str) -> list[str]:
    addrs = [gateway, "127.0.0.1"]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outbound address
        addrs.append(s.getsockname()[0])
    return list(dict.fromkeys(addrs))


@pytest.mark.docker
@pytest.mark.slow
def test_docker_replica_cannot_open_a_connection_to_a_listener_on_the_host(docker_replica):
    from deployments_app.runtimes.docker_runtime import client

    _runtime, _spec_, build, status = docker_replica
    c = client(timeout=120)
    try:
        ipam = c.networks.get("bridge").attrs["IPAM"]["Config"][0]
        # The default bridge's gateway (docker0's address on the host): the subnet's first.
        gateway = ipam.get("Gateway") or str(ipaddress.ip_network(ipam["Subnet"])[1])
        container = c.containers.get(status.name)
        assert container.attrs["HostConfig"]["NetworkMode"] == "none"
        with _host_listener() as (port, peers):
            addrs = _host_addresses(gateway)
            # Control: the same image on Docker's default bridge does reach the listener, so
            # the refusals below are the replica's isolation, not a firewall of this host.
            control = c.containers.run(
                build.ref,
                ["/opt/venv/bin/python", "-c", CONNECT, str(port), gateway],
                network_mode="bridge",
                labels=LABELS,
                remove=True,
            )
            assert json.loads(control) == {gateway: "connected"}
            assert peers, "the control container's connection was not seen"
            seen = len(peers)
            result = container.exec_run(["/opt/venv/bin/python", "-c", CONNECT, str(port), *addrs])
            assert result.exit_code == 0, result.output
            tried = json.loads(result.output)
            assert set(tried) == set(addrs)
            assert "connected" not in tried.values(), tried
            assert tried[gateway] == "OSError" or tried[gateway].endswith("Error"), tried
            assert len(peers) == seen  # and the listener saw nothing from the replica
        links = container.exec_run(["/bin/ls", "/sys/class/net"]).output.split()
        assert links == [b"lo"]
    finally:
        c.close()


@pytest.mark.docker
@pytest.mark.slow
def test_docker_replica_answers_only_the_portal_with_its_token(docker_replica):
    runtime, spec, _build, status = docker_replica
    _assert_answers_only_with_its_token(runtime, status, spec.deployment)
    _socket_dir_is_private(status, 10001)
    # Docker's own HEALTHCHECK (inside the container, no token) keeps working.
    from deployments_app.runtimes.docker_runtime import client

    c = client()
    try:
        health = c.containers.get(status.name).attrs["State"].get("Health") or {}
    finally:
        c.close()
    assert health.get("Status") in ("healthy", "starting"), health


# --------------------------------------------------------------------------- the portal


@pytest.fixture
def deployment_row(db):
    model = RegisteredModel.objects.create(name="iso-model")
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        status="ready",
        artifact_sha256="a" * 64,
        artifact_size=1,
        format="joblib",
    )
    deployment = Deployment.objects.create(
        name="iso-dep", model=model, version=version, runtime="docker", state="running"
    )
    Replica.objects.create(
        deployment=deployment,
        name="portal-iso-dep-0",
        index=0,
        version_number=1,
        endpoint="unix:/var/lib/portal/runtime/sockets/0123456789abcdef/http.sock",
        healthy=True,
        state="running",
    )
    return deployment


def test_viewers_do_not_see_replica_endpoints(deployment_row, api_client, role_client):
    secret_path = "sockets/0123456789abcdef"
    for role, shown in (("viewer", False), ("approver", False), ("deployer", True)):
        api = api_client(role)
        listed = api.get("/api/v1/deployments")
        detail = api.get("/api/v1/deployments/iso-dep")
        assert listed.status_code == detail.status_code == HTTPStatus.OK
        [replica] = detail.json()["replica_set"]
        assert replica["name"] == "portal-iso-dep-0"
        assert ("endpoint" in replica) is shown, role
        assert (secret_path in listed.content.decode()) is shown, role
        page = role_client(role)
        for url in ("/deployments/iso-dep/", "/deployments/iso-dep/status"):
            response = page.get(url)
            assert response.status_code == HTTPStatus.OK, (role, url)
            assert (secret_path in response.content.decode()) is shown, (role, url)


@pytest.fixture
def ready_version(db):
    model = RegisteredModel.objects.create(name="iso-launch")
    return ModelVersion.objects.create(
        model=model,
        number=1,
        status="ready",
        artifact_sha256="b" * 64,
        artifact_size=1,
        format="joblib",
    )


def _launch(api, name: str, runtime: str):
    return api.post(
        "/api/v1/deployments",
        {"name": name, "model": "iso-launch", "version": 1, "runtime": runtime},
        format="json",
    )


def test_allowed_runtimes_are_enforced_by_the_service(ready_version, api_client, settings):
    api = api_client("deployer")
    settings.PORTAL_ALLOWED_RUNTIMES = ["docker"]
    refused = _launch(api, "iso-p", "process")
    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert "the process runtime is not allowed" in refused.json()["error"]
    assert "PORTAL_ALLOWED_RUNTIMES" in refused.json()["error"]
    assert not Deployment.objects.filter(name="iso-p").exists()
    assert not AuditEvent.objects.filter(action="deployment.launched").exists()
    assert _launch(api, "iso-d", "docker").status_code == HTTPStatus.ACCEPTED

    settings.PORTAL_ALLOWED_RUNTIMES = ["process"]
    assert _launch(api, "iso-d2", "docker").status_code == HTTPStatus.BAD_REQUEST
    settings.PORTAL_RUNTIME = "docker"  # the default is not allowed: the allowed one is used
    assert _launch(api, "iso-auto", "").status_code == HTTPStatus.ACCEPTED
    assert Deployment.objects.get(name="iso-auto").runtime == "process"
    audit = AuditEvent.objects.get(action="deployment.launched", target_name="iso-auto")
    assert audit.details["runtime"] == "process"


def test_by_default_process_is_offered_only_without_docker(
    ready_version, api_client, role_client, settings, monkeypatch
):
    from deployments_app import runtimes

    settings.PORTAL_ALLOWED_RUNTIMES = ["auto"]
    api = api_client("deployer")
    page = role_client("deployer")
    monkeypatch.setattr(runtimes, "_docker_answers", lambda: True)
    assert runtimes.allowed_runtimes() == ["docker"]
    assert _launch(api, "iso-p", "process").status_code == HTTPStatus.BAD_REQUEST
    form = page.get("/models/iso-launch/versions/1/").content.decode()
    assert '<option value="docker">' in form and '<option value="process">' not in form

    monkeypatch.setattr(runtimes, "_docker_answers", lambda: False)
    assert runtimes.allowed_runtimes() == ["process"]
    assert _launch(api, "iso-d", "docker").status_code == HTTPStatus.BAD_REQUEST
    assert _launch(api, "iso-p", "process").status_code == HTTPStatus.ACCEPTED
    form = page.get("/models/iso-launch/versions/1/").content.decode()
    assert '<option value="process">' in form and '<option value="docker">' not in form
