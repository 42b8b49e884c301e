"""Alerts on a real deployment (issue 19): the house model deployed by the real worker on
Docker, calls through the portal's pipeline, its replica stopped and started again. The
error-rate rule fires when the stopped replica makes calls fail (5xx), the real worker posts
the signed alert to a real receiver (which first answers 500: retried), and the alert
resolves once calls succeed again. The deployment page shows the replica's CPU and memory
from Docker's stats."""

from __future__ import annotations

import json
import re
import uuid
from http import HTTPStatus

import pytest
from django.test import Client

from deployments_app.models import Alert, PredictionLog, Replica
from deployments_app.monitoring import alerts, webhooks
from deployments_app.predict import keys, proxy
from deployments_app.runtimes import get_runtime
from portal.audit import Actor
from portal.models import AuditEvent
from tests.conftest import FIXTURE_DIR, upload_and_wait_ready, wait_for
from tests.deployments_app.test_alerts import Receiver
from tests.deployments_app.test_lifecycle import _docker_or_skip, _wait_state, cleanup_docker

pytestmark = [pytest.mark.docker, pytest.mark.slow]
ROW = [1500, 3, 2]
__all__ = ["cleanup_docker"]  # a fixture (imported for the test here)


def test_error_rate_alert_fires_to_a_signed_webhook_and_resolves(
    transactional_db, worker_storage, api_client, role_client, cleanup_docker, settings
):
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on loopback
    engine = _docker_or_skip()
    name = f"alert-{uuid.uuid4().hex[:6]}"
    cleanup_docker.append(name)
    deployer = api_client("deployer")
    upload_and_wait_ready(deployer, name, FIXTURE_DIR / "house_price_linreg.pkl", [ROW])
    response = deployer.post(
        "/api/v1/deployments", {"name": name, "model": name, "version": 1}, format="json"
    )
    assert response.status_code == HTTPStatus.ACCEPTED, response.content
    deployment = _wait_state(name, ("running",), timeout=600)
    _, key = keys.api_key_create(
        user=deployer.user, actor=Actor.system(), name="alerts", deployment_names=[name]
    )
    client = Client()
    receiver = Receiver([500])  # the first delivery fails: the worker retries it
    try:

        def call(n: int) -> list[int]:
            proxy._targets.clear()
            codes = []
            for _ in range(n):
                answer = client.post(
                    f"/api/v1/deployments/{name}/predict",
                    data=json.dumps({"features": ROW}),
                    content_type="application/json",
                    HTTP_AUTHORIZATION=f"Bearer {key}",
                )
                codes.append(answer.status_code)
            return codes

        def logged(n: int) -> None:
            wait_for(lambda: PredictionLog.objects.filter(deployment_name=name).count() >= n,
                     timeout=30, what=f"{n} log rows")  # fmt: skip

        # The webhook and the rule, over the API as a deployer would set them.
        hook = deployer.put(
            f"/api/v1/deployments/{name}/alert-webhook", {"url": receiver.url}, format="json"
        )
        assert hook.status_code == HTTPStatus.OK, hook.content
        secret = hook.json()["secret"]
        made = deployer.post(
            f"/api/v1/deployments/{name}/alert-rules",
            {"kind": "error_rate", "threshold": 20, "clear_threshold": 10, "min_requests": 10},
            format="json",
        )
        assert made.status_code == HTTPStatus.CREATED, made.content
        rule = deployment.alert_rules.get()

        assert call(20) == [200] * 20
        logged(20)
        assert alerts.alert_rules_evaluate() == {"ok": 1}

        # The replica stops: calls fail (the proxy answers 504; 20 of 40: 50 %) and the rule
        # fires.
        replica = Replica.objects.get(deployment=deployment)
        container = engine.containers.get(replica.name)
        container.stop(timeout=5)
        failing = call(20)
        assert all(code >= 500 for code in failing), failing
        logged(40)
        assert alerts.alert_rules_evaluate() == {"fired": 1}
        alert = Alert.objects.get(rule=rule)
        assert alert.state == "firing" and alert.value == 50.0
        fired = AuditEvent.objects.get(action="alert.fired", target_name=name)
        assert fired.details["alert"] == alert.pk and fired.details["kind"] == "error_rate"

        wait_for(lambda: Alert.objects.get(pk=alert.pk).delivery_status == "delivered",
                 timeout=60, what="the fired alert's delivery")  # fmt: skip
        assert len(receiver.requests) == 2  # a 500, then the retry
        for got in receiver.requests:
            headers = got["headers"]
            assert webhooks.verify(secret, headers["X-Portal-Timestamp"], got["body"],
                                   headers["X-Portal-Signature"])  # fmt: skip
        body = json.loads(receiver.requests[-1]["body"])
        assert body["event"] == "alert.fired" and body["alert"]["deployment"] == name
        assert body["alert"]["value"] == 50.0 and body["alert"]["state"] == "firing"
        assert "error rate: 50% > 20%" in body["alert"]["message"]

        # Started again: the calls succeed, the rate falls below the clear threshold (to
        # 1 failed in 12), and after two evaluations in a row the alert resolves.
        container.start()
        wait_for(lambda: call(1) == [200], timeout=60, interval=1, what="the replica back")
        logs = PredictionLog.objects.filter(deployment_name=name)
        total = logs.count()
        failed = logs.filter(status_code__gte=500).count()
        assert set(call(12 * failed - total)) == {200}
        logged(12 * failed)
        assert alerts.alert_rules_evaluate() == {"firing": 1}
        assert alerts.alert_rules_evaluate() == {"resolved": 1}
        alert.refresh_from_db()
        assert alert.state == "resolved" and alert.resolved_value == pytest.approx(8.333, 0.01)
        assert AuditEvent.objects.filter(action="alert.resolved", target_name=name).count() == 1
        wait_for(lambda: receiver.events()[-1:] == ["alert.resolved"], timeout=30,
                 what="the resolution's delivery")  # fmt: skip
        last = receiver.requests[-1]
        assert webhooks.verify(secret, last["headers"]["X-Portal-Timestamp"], last["body"],
                               last["headers"]["X-Portal-Signature"])  # fmt: skip
        assert json.loads(last["body"])["alert"]["resolved_at"] is not None

        # The page: the alert and the replica's CPU and memory from Docker.
        page = role_client("viewer").get(f"/deployments/{name}/").content.decode()
        assert "error rate: 50% &gt; 20%" in page
        row = re.search(rf"<td class=\"wrap\">{re.escape(replica.name)}</td>.*?</tr>", page)
        assert row, page[:2000]
        cpu = re.search(r'data-usage="cpu">([\d.]+)%<', row.group(0))
        memory = re.search(r'data-usage="memory" title="limit (\d+) MiB">(\d+) MiB<', row.group(0))
        assert cpu and memory, row.group(0)
        assert 0.0 <= float(cpu.group(1)) < 400
        assert int(memory.group(1)) == deployment.memory_mb  # the container's limit
        assert 1 <= int(memory.group(2)) < deployment.memory_mb
        usage = get_runtime("docker").replica_usage(replica.name)
        assert usage is not None and usage.memory_bytes > 1024 * 1024
        assert get_runtime("docker").replica_usage("h5-no-such-replica") is None
    finally:
        receiver.close()
        for r in Replica.objects.filter(deployment__name=name):
            get_runtime(deployment.runtime).remove_replica(r.name)
