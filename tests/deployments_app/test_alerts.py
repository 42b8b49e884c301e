"""Alerts (issue 19) without Docker: rules over the real prediction log, drift snapshots and
replica events in PostgreSQL; hysteresis; the API with its permission checks and 400s;
webhook URL checks, signatures, and delivery to a real HTTP receiver with retries and
exponential backoff through the real Celery worker."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from deployments_app import tasks
from deployments_app.models import (
    Alert,
    AlertRule,
    AlertWebhook,
    Deployment,
    DeploymentEvent,
    DriftSnapshot,
    PredictionLog,
)
from deployments_app.monitoring import alerts, webhooks
from models_app.models import ModelVersion, RegisteredModel
from portal.audit import Actor
from portal.errors import ApplicationError
from portal.models import AuditEvent
from tests.conftest import wait_for

URL = "/api/v1/deployments/dep"


class Receiver:
    """A real webhook receiver: an http.server thread on a free loopback port that answers
    with the statuses it is given (then 200) and keeps what it got."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(
                    {"at": time.monotonic(), "headers": dict(self.headers), "body": body}
                )
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[str]:
        return [json.loads(r["body"])["event"] for r in self.requests]


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(statuses=None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def make_deployment(name: str = "dep", state: str = "running") -> Deployment:
    model = RegisteredModel.objects.create(name=f"{name}-model")
    version = ModelVersion.objects.create(
        model=model, number=1, status="ready", approval=ModelVersion.Approval.APPROVED,
        artifact_sha256="0" * 64, artifact_size=1,
    )  # fmt: skip
    return Deployment.objects.create(
        name=name, model=model, version=version, runtime="process", state=state
    )


def log_calls(name: str, n: int, *, status: int = 200, latency_ms: float = 5.0, ago=None):
    at = timezone.now() - (ago or timedelta(seconds=30))
    PredictionLog.objects.bulk_create(
        PredictionLog(created_at=at, deployment_name=name, version_number=1,
                      status_code=status, latency_ms=latency_ms)
        for _ in range(n)
    )  # fmt: skip


SYSTEM = Actor.system("test")


def rule(deployment, kind, threshold, **options) -> AlertRule:
    return alerts.alert_rule_create(
        deployment=deployment, actor=SYSTEM, kind=kind, threshold=threshold, **options
    )


def evaluate(r: AlertRule, now=None) -> str:
    r.refresh_from_db()
    return alerts.alert_rule_evaluate(rule=r, now=now)


# --------------------------------------------------------------------------- URLs, signatures


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http://user:pw@93.184.216.34/hook", "credentials"),
        ("http:///nohost", "no host"),
        ("http://127.0.0.1:8000/hook", "non-public address (127.0.0.1)"),
        ("http://169.254.169.254/latest/meta-data", "non-public address"),
        ("http://10.1.2.3/hook", "non-public address"),
        ("http://[::1]/hook", "non-public address"),
        ("http://[::ffff:127.0.0.1]/hook", "non-public address"),
        ("http://93.184.216.34:99999/hook", "not valid"),
    ],
)
def test_webhook_urls_that_are_refused(settings, url, reason):
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(ApplicationError) as caught:
        webhooks.check_url(url)
    assert reason in caught.value.message


def test_webhook_urls_that_are_accepted(settings):
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = False
    assert (
        webhooks.check_url(" https://93.184.216.34/hook?x=1 ") == "https://93.184.216.34/hook?x=1"
    )
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = True
    assert webhooks.check_url("http://127.0.0.1:9/hook") == "http://127.0.0.1:9/hook"


def test_signature_verifies_and_refuses_tampering_and_replay():
    body = b'{"event":"alert.fired"}'
    ts = int(time.time())
    signature = webhooks.sign("s3cret", ts, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert webhooks.verify("s3cret", str(ts), body, signature)
    assert not webhooks.verify("other", str(ts), body, signature)
    assert not webhooks.verify("s3cret", str(ts), body + b" ", signature)
    assert not webhooks.verify("s3cret", str(ts + 1), body, signature)  # timestamp is signed
    assert not webhooks.verify("s3cret", str(ts), body, signature, now=ts + 301)  # replayed late
    assert not webhooks.verify("s3cret", "soon", body, signature)


def test_backoff_doubles_and_is_capped(settings):
    settings.PORTAL_ALERT_WEBHOOK_BACKOFF_SECONDS = 10
    assert [webhooks.backoff_seconds(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert webhooks.backoff_seconds(30) == webhooks.MAX_BACKOFF_S


# --------------------------------------------------------------------------- rules


@pytest.mark.django_db
def test_error_rate_fires_once_and_resolves_with_hysteresis():
    deployment = make_deployment()
    r = rule(deployment, "error_rate", 20, clear_threshold=10, min_requests=10, resolve_after=2)
    log_calls("dep", 5, status=500)
    assert evaluate(r) == "no data"  # 5 of 10 calls: not judged yet
    log_calls("dep", 5)
    log_calls("dep", 40, status=404)  # the callers' errors are not the model's
    assert evaluate(r) == "fired"  # 5 of 10 answered calls failed: 50 %
    assert evaluate(r) == "firing"
    alert = Alert.objects.get(rule=r)
    assert alert.state == "firing" and alert.value == 50.0
    assert "error rate: 50% > 20%" in alert.message
    assert alert.delivery_status == "none"  # no webhook
    # 5 of 30: 16.7 %, below the threshold but above where it clears: still firing.
    log_calls("dep", 20)
    assert evaluate(r) == "firing" and evaluate(r) == "firing"
    # 5 of 60: 8.3 %, clear once, then twice: resolved (and only then).
    log_calls("dep", 30)
    assert evaluate(r) == "firing"
    assert evaluate(r) == "resolved"
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.resolved_value == pytest.approx(8.333, abs=0.01)
    assert Alert.objects.filter(rule=r).count() == 1
    actions = list(
        AuditEvent.objects.filter(action__startswith="alert").values_list("action", flat=True)
    )
    assert sorted(actions) == ["alert.fired", "alert.resolved", "alert_rule.created"]
    fired = AuditEvent.objects.get(action="alert.fired")
    assert fired.target_name == "dep" and fired.details["value"] == 50.0
    assert fired.actor_name == "alerts" and fired.outcome == "failure"
    assert (
        DeploymentEvent.objects.filter(deployment=deployment, message__startswith="alert").count()
        == 2
    )


@pytest.mark.django_db
def test_a_wobbling_figure_fires_after_consecutive_breaches_only():
    deployment = make_deployment()
    r = rule(deployment, "p95_latency", 100, min_requests=5, fire_after=2)
    log_calls("dep", 20, latency_ms=400.0)
    assert evaluate(r) == "ok"  # one breach of the two it needs
    PredictionLog.objects.all().delete()
    log_calls("dep", 20, latency_ms=10.0)
    assert evaluate(r) == "ok"  # back under: the count starts again
    PredictionLog.objects.all().delete()
    log_calls("dep", 20, latency_ms=400.0)
    assert evaluate(r) == "ok"
    assert evaluate(r) == "fired"
    assert Alert.objects.get(rule=r).value > 100


@pytest.mark.django_db
def test_no_traffic_replica_restarts_and_window():
    deployment = make_deployment()
    quiet = rule(deployment, "no_traffic", 0, window_minutes=5)
    assert evaluate(quiet) == "no data"  # the rule is younger than its window
    AlertRule.objects.filter(pk=quiet.pk).update(created_at=timezone.now() - timedelta(hours=1))
    log_calls("dep", 3, ago=timedelta(minutes=10))  # outside the window
    assert evaluate(quiet) == "fired"
    log_calls("dep", 1)
    assert evaluate(quiet) == "firing" and evaluate(quiet) == "resolved"
    Deployment.objects.filter(pk=deployment.pk).update(state="stopped")
    assert evaluate(quiet) == "no data"  # a stopped deployment is quiet on purpose

    restarts = rule(deployment, "replica_restarts", 1, window_minutes=10)
    DeploymentEvent.objects.create(
        deployment=deployment, message="replica h5-dep-0 was exited; replacing it"
    )
    assert evaluate(restarts) == "ok"  # one replacement is not more than one
    DeploymentEvent.objects.create(
        deployment=deployment, message="replica h5-dep-0 was hanging: /health did not answer; "
        "replacing it",
    )  # fmt: skip
    assert evaluate(restarts) == "fired"
    DeploymentEvent.objects.filter(message__contains="replacing").update(
        created_at=timezone.now() - timedelta(minutes=30)
    )
    assert evaluate(restarts) == "firing" and evaluate(restarts) == "resolved"


@pytest.mark.django_db
def test_drift_rule_reads_the_latest_drift_window():
    """Through h4's DriftSnapshot rows and `latest_drift` (the real drift computation is
    driven end to end in test_alerts_docker when it exists)."""
    deployment = make_deployment()
    r = rule(deployment, "drift", 0.25)
    assert evaluate(r) == "no data"
    end = timezone.now() - timedelta(minutes=1)

    def window(end, scores):
        for feature, psi in scores.items():
            DriftSnapshot.objects.create(
                deployment=deployment, version_number=1, window_start=end - timedelta(hours=1),
                window_end=end, feature=feature, kind="number", psi=psi, count=500,
            )  # fmt: skip

    window(end - timedelta(hours=1), {"area": 0.9})  # an older window is not read
    window(end, {"area": 0.1, "rooms": 0.05, DriftSnapshot.PREDICTION: 2.0})
    assert evaluate(r) == "ok"
    window(end + timedelta(seconds=30), {"area": 0.6, "rooms": 0.01})
    assert evaluate(r) == "fired"
    alert = Alert.objects.get(rule=r)
    assert alert.value == 0.6 and "'area'" in alert.message
    window(end + timedelta(seconds=50), {"area": 0.02})
    assert evaluate(r) == "firing" and evaluate(r) == "resolved"


@pytest.mark.django_db
def test_one_broken_rule_does_not_stop_the_others(monkeypatch):
    deployment = make_deployment()
    rule(deployment, "drift", 0.2)
    good = rule(deployment, "error_rate", 1, min_requests=1)
    log_calls("dep", 2, status=503)

    def broken(_deployment):
        raise RuntimeError("drift store unreachable")

    monkeypatch.setattr(alerts.drift, "latest_drift", broken)
    assert alerts.alert_rules_evaluate() == {"error": 1, "fired": 1}
    assert Alert.objects.get().rule_id == good.pk


# --------------------------------------------------------------------------- API


@pytest.mark.django_db
def test_rules_api_permissions_validation_and_audit(api_client):
    make_deployment()
    viewer, deployer = api_client("viewer"), api_client("deployer")
    assert viewer.get(f"{URL}/alert-rules").json() == []
    body = {"kind": "error_rate", "threshold": 5, "window_minutes": 10}
    assert viewer.post(f"{URL}/alert-rules", body, format="json").status_code == 403
    assert api_client(None).get(f"{URL}/alert-rules").status_code in (401, 403)

    bad = [
        ({"kind": "cpu", "threshold": 1}, "kind"),
        ({"kind": "error_rate"}, "threshold"),
        ({"kind": "error_rate", "threshold": -1}, "threshold"),
        ({"kind": "error_rate", "threshold": 150}, "at most 100"),
        ({"kind": "error_rate", "threshold": 5, "clear_threshold": 9}, "at most the threshold"),
        ({"kind": "no_traffic", "threshold": 5, "clear_threshold": 1}, "at least the threshold"),
        ({"kind": "p95_latency", "threshold": 5, "window_minutes": 0}, "window_minutes"),
    ]
    for payload, needle in bad:
        response = deployer.post(f"{URL}/alert-rules", payload, format="json")
        assert response.status_code == 400, (payload, response.content)
        assert needle in response.content.decode(), (payload, response.content)
    assert not AlertRule.objects.exists()

    response = deployer.post(f"{URL}/alert-rules", body, format="json")
    assert response.status_code == 201, response.content
    made = response.json()
    assert made["kind"] == "error_rate" and made["threshold"] == 5 and made["window_minutes"] == 10
    assert [r["id"] for r in viewer.get(f"{URL}/alert-rules").json()] == [made["id"]]
    created = AuditEvent.objects.get(action="alert_rule.created")
    assert created.actor_name == deployer.user.username and created.details["rule"] == made["id"]

    assert api_client("deployer").post(
        "/api/v1/deployments/nope/alert-rules", body, format="json"
    ).status_code == 404  # fmt: skip
    assert viewer.delete(f"{URL}/alert-rules?id={made['id']}").status_code == 403
    assert deployer.delete(f"{URL}/alert-rules?id=x").status_code == 400
    assert deployer.delete(f"{URL}/alert-rules?id=999999").status_code == 404
    assert (
        deployer.delete(f"{URL}/alert-rules", {"id": made["id"]}, format="json").status_code == 204
    )
    assert not AlertRule.objects.exists()
    assert AuditEvent.objects.filter(action="alert_rule.deleted").count() == 1


@pytest.mark.django_db
def test_deleting_a_firing_rule_resolves_its_alert_and_keeps_it(api_client):
    deployment = make_deployment()
    r = rule(deployment, "error_rate", 1, min_requests=1)
    log_calls("dep", 3, status=500)
    assert evaluate(r) == "fired"
    response = api_client("deployer").delete(f"{URL}/alert-rules?id={r.pk}")
    assert response.status_code == 204
    alert = Alert.objects.get()
    assert alert.state == "resolved" and alert.rule is None and alert.kind == "error_rate"
    listed = api_client("viewer").get("/api/v1/alerts?deployment=dep&state=resolved").json()
    assert [a["id"] for a in listed] == [alert.pk] and listed[0]["deployment"] == "dep"
    assert api_client("viewer").get("/api/v1/alerts?state=firing").json() == []
    assert api_client("viewer").get("/api/v1/alerts?state=loud").status_code == 400


@pytest.mark.django_db
def test_webhook_api_secret_once_ssrf_refused(api_client, settings):
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = False
    make_deployment()
    viewer, deployer = api_client("viewer"), api_client("deployer")
    hook = {"url": "https://93.184.216.34/hook"}
    assert viewer.put(f"{URL}/alert-webhook", hook, format="json").status_code == 403
    response = deployer.put(f"{URL}/alert-webhook", {"url": "http://127.0.0.1/x"}, format="json")
    assert response.status_code == 400 and "non-public" in response.json()["error"]
    response = deployer.put(f"{URL}/alert-webhook", hook, format="json")
    assert response.status_code == 200, response.content
    secret = response.json()["secret"]
    assert len(secret) >= 40 and AlertWebhook.objects.get().secret == secret
    shown = deployer.get(f"{URL}/alert-webhook").json()
    assert shown == {"url": hook["url"], "enabled": True}  # the secret is never shown again
    # Viewers see scheme and host only: a URL may hold the receiver's own secret.
    assert viewer.get(f"{URL}/alert-webhook").json()["url"] == "https://93.184.216.34/…"
    assert AuditEvent.objects.get(action="alert_webhook.set").details["url"] == (
        "https://93.184.216.34/…"
    )
    again = deployer.put(f"{URL}/alert-webhook", hook | {"enabled": False}, format="json").json()
    assert "secret" not in again and again["enabled"] is False
    rotated = deployer.put(f"{URL}/alert-webhook", hook | {"rotate_secret": True}, format="json")
    assert rotated.json()["secret"] != secret
    assert deployer.delete(f"{URL}/alert-webhook").status_code == 204
    assert not AlertWebhook.objects.exists()
    actions = AuditEvent.objects.filter(action__startswith="alert_webhook").values_list(
        "action", "details__secret_rotated"
    )
    assert list(actions.order_by("id")) == [
        ("alert_webhook.set", False), ("alert_webhook.set", False),
        ("alert_webhook.set", True), ("alert_webhook.deleted", None),
    ]  # fmt: skip
    # The secret is in no audit event.
    assert not AuditEvent.objects.filter(details__icontains=secret).exists()


@pytest.mark.django_db
def test_alerts_page_and_deployment_panel(role_client):
    deployment = make_deployment()
    r = rule(deployment, "error_rate", 1, min_requests=1)
    log_calls("dep", 3, status=500)
    evaluate(r)
    other = make_deployment("other")
    rule(other, "no_traffic", 0)
    viewer = role_client("viewer")
    page = viewer.get("/alerts/").content.decode()
    assert 'href="/alerts/"' in page and "error rate: 100% &gt; 1%" in page
    assert viewer.get("/alerts/?state=resolved").content.decode().count("data-alert=") == 0
    assert viewer.get("/alerts/?deployment=other").content.decode().count("data-alert=") == 0
    assert (
        viewer.get("/alerts/?deployment=dep&state=firing").content.decode().count("data-alert=")
        == 1
    )
    detail = viewer.get("/deployments/dep/").content.decode()
    assert 'id="alerts"' in detail and "1 firing" in detail and "/alerts/?deployment=dep" in detail
    assert 'id="alert-rule-form"' not in detail  # viewers see the rules, not the forms
    deployer = role_client("deployer")
    assert 'id="alert-rule-form"' in deployer.get("/deployments/dep/").content.decode()
    assert viewer.post("/deployments/dep/alert-rules", {"kind": "drift"}).status_code == 403
    response = deployer.post("/deployments/dep/alert-rules", {"kind": "drift", "threshold": "0.3",
                             "window_minutes": 5, "min_requests": 0, "fire_after": 1,
                             "resolve_after": 2})  # fmt: skip
    assert response.status_code == 302 and AlertRule.objects.filter(kind="drift").exists()
    response = deployer.post("/deployments/dep/alert-rules", {"kind": "drift", "threshold": "x"},
                             follow=True)  # fmt: skip
    assert "threshold" in response.content.decode() and AlertRule.objects.count() == 3


# --------------------------------------------------------------------------- delivery


@pytest.mark.django_db(transaction=True)
def test_delivery_is_signed_and_retried_with_backoff_by_the_worker(
    receiver, celery_worker_process, settings
):
    """The real worker posts the alert: the receiver answers 500 twice, then 200. The
    attempts come 2 s and 4 s apart (the test worker's PORTAL_ALERT_WEBHOOK_BACKOFF_SECONDS),
    carry one delivery id and each a valid signature."""
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = True
    hook = receiver([500, 500])
    deployment = make_deployment()
    _, secret = webhooks.alert_webhook_set(deployment=deployment, actor=SYSTEM, url=hook.url)
    r = rule(deployment, "error_rate", 10, min_requests=1)
    log_calls("dep", 4, status=500)
    assert evaluate(r) == "fired"  # enqueued on commit; the evaluator does not wait for it
    alert = Alert.objects.get()
    wait_for(lambda: Alert.objects.get().delivery_status == "delivered", timeout=60,
             what="the delivery")  # fmt: skip
    alert.refresh_from_db()
    assert alert.delivery_attempts == 3 and alert.delivery_event == "fired"
    assert len(hook.requests) == 3
    gaps = [b["at"] - a["at"] for a, b in zip(hook.requests, hook.requests[1:], strict=False)]
    assert 1.8 <= gaps[0] < 3.8 and 3.8 <= gaps[1] < 7.0, gaps
    for request in hook.requests:
        headers = request["headers"]
        assert webhooks.verify(secret, headers["X-Portal-Timestamp"], request["body"],
                               headers["X-Portal-Signature"])  # fmt: skip
        assert headers["X-Portal-Delivery"] == f"{alert.pk}.fired"
        assert headers["Content-Type"] == "application/json"
    body = json.loads(hook.requests[-1]["body"])
    assert body["event"] == "alert.fired"
    assert body["alert"] | {"fired_at": None} == {
        "id": alert.pk, "rule": r.pk, "deployment": "dep", "kind": "error_rate",
        "state": "firing", "value": 100.0, "threshold": 10.0, "window_minutes": 5,
        "message": alert.message, "fired_at": None, "resolved_at": None, "resolved_value": None,
    }  # fmt: skip

    # A receiver that refuses for good (a 4xx) is not retried; the failure is on the alert.
    hook.statuses = [410]
    log_calls("dep", 400)
    assert evaluate(r) == "firing" and evaluate(r) == "resolved"
    wait_for(lambda: Alert.objects.get().delivery_status == "failed", timeout=30,
             what="the failed delivery")  # fmt: skip
    alert.refresh_from_db()
    assert alert.delivery_event == "resolved" and alert.delivery_attempts == 1
    assert "HTTP 410" in alert.delivery_error
    assert hook.events()[-1] == "alert.resolved" and len(hook.requests) == 4


@pytest.mark.django_db
def test_delivery_task_retries_in_process(receiver, settings):
    """The task itself (run eagerly): a 500 makes it retry, the next attempt delivers; with
    retries used up a 5xx is final."""
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = True
    settings.PORTAL_ALERT_WEBHOOK_RETRIES = 1
    hook = receiver([500])
    deployment = make_deployment()
    webhooks.alert_webhook_set(deployment=deployment, actor=SYSTEM, url=hook.url)
    alert = Alert.objects.create(deployment=deployment, kind="drift", threshold=0.2, value=0.5,
                                 fired_at=timezone.now(), delivery_status="pending",
                                 delivery_event="fired")  # fmt: skip
    tasks.alert_deliver.apply(args=[alert.pk], kwargs={"event": "fired"})
    alert.refresh_from_db()
    assert alert.delivery_status == "delivered" and alert.delivery_attempts == 2
    hook.statuses = [502, 502]
    outcome = webhooks.alert_deliver(alert_id=alert.pk, event="fired", attempt=1)
    assert outcome.retry_in == settings.PORTAL_ALERT_WEBHOOK_BACKOFF_SECONDS
    outcome = webhooks.alert_deliver(alert_id=alert.pk, event="fired", attempt=2)
    assert outcome.retry_in is None and not outcome.delivered
    alert.refresh_from_db()
    assert alert.delivery_status == "failed" and "HTTP 502" in alert.delivery_error
    # The URL is checked again at delivery: a webhook that now points inward is not posted.
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = False
    before = len(hook.requests)
    outcome = webhooks.alert_deliver(alert_id=alert.pk, event="fired", attempt=1)
    assert outcome.retry_in is None and "non-public" in outcome.error
    assert len(hook.requests) == before


# --------------------------------------------------------------------------- schema


def test_the_schema_describes_the_alert_endpoints(api_client):
    paths = api_client("viewer").get("/api/schema/?format=json").json()["paths"]
    assert {"get", "post", "delete"} <= set(paths["/api/v1/deployments/{name}/alert-rules"])
    assert {"get", "put", "delete"} <= set(paths["/api/v1/deployments/{name}/alert-webhook"])
    assert "get" in paths["/api/v1/alerts"]


@pytest.mark.slow
@pytest.mark.django_db
def test_alert_operations_never_answer_500(make_user, settings):
    """Schema-driven inputs against an existing deployment: never a 500."""
    import base64

    import schemathesis
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings

    from portal.wsgi import application
    from tests.factories import PASSWORD

    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = False
    make_deployment()
    make_user("admin", username="fuzz-alerts")
    auth = {
        "Authorization": "Basic " + base64.b64encode(f"fuzz-alerts:{PASSWORD}".encode()).decode()
    }
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
        operations = [
            result.ok() for result in schema.get_all_operations() if "/alert" in result.ok().path
        ]
        assert len(operations) == 7
        for operation in operations:

            @given(case=operation.as_strategy())
            @hypothesis_settings(max_examples=30, deadline=None, database=None,
                                 suppress_health_check=list(HealthCheck))  # fmt: skip
            def run(case):
                label = f"{case.method} {case.path}"
                if case.path_parameters:
                    case.path_parameters = {"name": "dep"}
                response = case.call(headers=auth)
                assert response.status_code < 500, (label, case.body, response.text[:300])

            run()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


# --------------------------------------------------------------------------- beat, usage


def test_the_evaluator_is_on_beat(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["evaluate-alerts"]
    assert entry["task"] == "deployments_app.tasks.alerts_evaluate"
    assert entry["schedule"] == settings.PORTAL_ALERT_EVALUATE_SECONDS
    assert tasks.alerts_evaluate.name == entry["task"]


def test_process_replica_usage_from_proc(tmp_path):
    """A real busy process stands for a process replica (its state file as the runtime
    writes it): CPU is near one core, memory is its resident set, the limit the runtime's."""
    import subprocess
    import sys

    from deployments_app.runtimes.process_runtime import ProcessRuntime

    runtime = ProcessRuntime(state_root=tmp_path / "state", env_root=tmp_path / "envs")
    cmd = [sys.executable, "-c", "x = bytearray(40 * 2**20)\nwhile True: pass"]
    proc = subprocess.Popen(cmd)
    try:
        name = f"h5-usage-{proc.pid}"
        path = runtime._state_path(name)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"name": name, "pid": proc.pid, "cmdline": cmd,
                                    "memory_mb": 256}))  # fmt: skip
        time.sleep(0.5)  # the bytearray is allocated
        usage = runtime.replica_usage(name)
        assert usage is not None
        assert 20 <= usage.cpu_percent <= 110, usage  # one busy thread (on a shared machine)
        assert 40 * 2**20 <= usage.memory_bytes < 200 * 2**20
        assert usage.memory_limit_bytes == 256 * 2**20
        assert runtime.replica_usage(name) is usage  # cached: no second look within 5 s
    finally:
        proc.kill()
        proc.wait()
    assert runtime.replica_usage("h5-usage-none") is None


@pytest.mark.django_db
def test_webhook_form_shows_the_secret_once_from_the_session(role_client, settings):
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = False
    make_deployment()
    deployer = role_client("deployer")
    response = deployer.post("/deployments/dep/alert-webhook", {"url": "ftp://x/"}, follow=True)
    assert "http:// or https://" in response.content.decode()
    response = deployer.post(
        "/deployments/dep/alert-webhook", {"url": "https://93.184.216.34/h", "enabled": "on"}
    )
    assert response.status_code == 302
    secret = AlertWebhook.objects.get().secret
    assert secret not in "".join(c.value for c in response.cookies.values())
    first = deployer.get("/deployments/dep/").content.decode()
    assert secret in first and 'id="alert-webhook-secret"' in first
    assert secret not in deployer.get("/deployments/dep/").content.decode()
    deployer.post(
        "/deployments/dep/alert-webhook", {"url": "https://93.184.216.34/h", "delete": "1"}
    )
    assert not AlertWebhook.objects.exists()
