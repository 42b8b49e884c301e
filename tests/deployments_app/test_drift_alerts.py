"""The drift alert on real drift (issue 19, "done when"): the house-price model in real
containers, called through the portal's proxy with capture on (h4's fixtures in
test_drift); the beat's drift task scores the captured window, the beat's alert evaluator
reads it. Unshifted traffic fires nothing; doubled areas fire the alert, which is posted,
signed, to a real webhook receiver."""

# ruff: noqa: S311 - seeded synthetic traffic, not security
from __future__ import annotations

import json
import random

import pytest

from deployments_app import tasks
from deployments_app.models import Alert, DriftSnapshot, PredictionLog
from deployments_app.monitoring import alerts, drift, webhooks
from portal.audit import Actor
from portal.models import AuditEvent
from tests.deployments_app.test_alerts import Receiver
from tests.deployments_app.test_drift import (  # noqa: F401 - fixtures by name
    _score,
    _shared_secret,
    _traffic,
    house,
    monitored,
    served,
)
from tests.deployments_app.test_predict import key_for  # noqa: F401 - a fixture by name

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_doubled_areas_fire_the_drift_alert_to_a_webhook_unshifted_do_not(
    client,
    monitored,  # noqa: F811 - the fixture imported by name
    settings,
    django_capture_on_commit_callbacks,
):
    settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on loopback
    deployment, key = monitored
    receiver = Receiver()
    try:
        _, secret = webhooks.alert_webhook_set(
            deployment=deployment, actor=Actor.system(), url=receiver.url
        )
        rule = alerts.alert_rule_create(
            deployment=deployment, actor=Actor.system(), kind="drift",
            threshold=drift.PSI_MAJOR, clear_threshold=drift.PSI_MODERATE,
        )  # fmt: skip

        # Unshifted traffic: scored, below the threshold, nothing fires.
        _traffic(client, deployment, key, random.Random(3))
        _score()
        assert drift.latest_drift(deployment)["worst"][1] < drift.PSI_MODERATE
        assert alerts.alert_rules_evaluate() == {"ok": 1}
        assert not Alert.objects.exists() and receiver.requests == []

        # Doubled areas: the area's PSI rises past the threshold and the rule fires.
        # (A fresh window: the unshifted calls and their scores are removed first.)
        DriftSnapshot.objects.filter(deployment=deployment).delete()
        PredictionLog.objects.filter(deployment_name=deployment.name).delete()
        _traffic(client, deployment, key, random.Random(2), area_factor=2.0)
        _score()
        worst = drift.latest_drift(deployment)["worst"]
        assert worst[0] == "/0" and worst[1] > drift.PSI_MAJOR
        with django_capture_on_commit_callbacks() as queued:
            assert alerts.alert_rules_evaluate() == {"fired": 1}
        assert len(queued) == 1  # the delivery, enqueued when the firing commits
        alert = Alert.objects.get(rule=rule)
        assert alert.kind == "drift" and alert.value == pytest.approx(worst[1])
        assert "'/0'" in alert.message
        assert AuditEvent.objects.filter(action="alert.fired", target_name=deployment.name)
        # This test's transaction is never committed, so the worker cannot see the alert:
        # the delivery task runs here, as the worker would run it.
        tasks.alert_deliver.apply(args=[alert.pk], kwargs={"event": "fired"})
        alert.refresh_from_db()
        assert alert.delivery_status == "delivered" and alert.delivery_attempts == 1
        (got,) = receiver.requests
        assert webhooks.verify(secret, got["headers"]["X-Portal-Timestamp"], got["body"],
                               got["headers"]["X-Portal-Signature"])  # fmt: skip
        body = json.loads(got["body"])
        assert body["event"] == "alert.fired" and body["alert"]["kind"] == "drift"
        assert body["alert"]["deployment"] == deployment.name
        assert body["alert"]["value"] > drift.PSI_MAJOR
    finally:
        receiver.close()
