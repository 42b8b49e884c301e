"""Alert delivery to a deployment's webhook: a signed JSON POST, retried with backoff.

The body is JSON (see `payload`). The signature is an HMAC-SHA256, keyed with the webhook's
secret, of `<timestamp>.<body>`, sent as `X-Portal-Signature: sha256=<hex>` beside
`X-Portal-Timestamp: <unix seconds>`: a receiver recomputes it over the raw body and refuses
stale timestamps, so a captured request cannot be replayed later. `X-Portal-Delivery`
(`<alert id>.<event>`) is the same on every retry, for receivers that deduplicate.

SSRF: the portal, not the user, makes the request, from inside the operator's network. The
URL must be http(s) without credentials; every address its host resolves to is checked at
each delivery (private, loopback, link-local such as the cloud metadata address, multicast
and reserved ones are refused unless PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE), redirects are not
followed, and the answer's body is not read beyond a few hundred bytes nor shown to anyone
but the deployment's viewers. A name that resolves differently between the check and the
connection (DNS rebinding) is not covered: route the worker's traffic through an egress
proxy where that matters.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployments_app.models import Alert, AlertWebhook, Deployment
from portal.audit import Actor, audit_record
from portal.errors import ApplicationError

log = logging.getLogger("deployments_app.alerts")
SIGNATURE_HEADER = "X-Portal-Signature"
TIMESTAMP_HEADER = "X-Portal-Timestamp"
MAX_BACKOFF_S = 3600.0
SCHEMES = ("http", "https")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>." + body)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: int = 300,
           now: float | None = None) -> bool:  # fmt: skip
    """What a receiver does (the same snippet is in docs/OPERATIONS.md)."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now or time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def backoff_seconds(attempt: int) -> float:
    """Wait before retry number `attempt` (1, 2, ...): base * 2^(attempt-1), capped."""
    base = float(settings.PORTAL_ALERT_WEBHOOK_BACKOFF_SECONDS)
    return min(MAX_BACKOFF_S, base * 2 ** max(0, attempt - 1))


# --------------------------------------------------------------------------- URL checks


def _blocked(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, *, resolve: bool = True) -> str:
    """The URL if the portal may post to it, else ApplicationError with the reason."""
    url = (url or "").strip()
    if len(url) > 500:
        raise ApplicationError("the webhook URL is longer than 500 characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ApplicationError(f"the webhook URL is not valid: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ApplicationError("the webhook URL must start with http:// or https://")
    if not parts.hostname:
        raise ApplicationError("the webhook URL has no host")
    if parts.username or parts.password:
        raise ApplicationError("the webhook URL must not hold credentials (use the secret)")
    if parts.fragment:
        raise ApplicationError("the webhook URL must not have a #fragment")
    if resolve and not settings.PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE:
        try:
            infos = socket.getaddrinfo(parts.hostname, port or 443, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise ApplicationError(f"the webhook host does not resolve: {exc}") from None
        bad = sorted({info[4][0] for info in infos if _blocked(info[4][0])})
        if bad:
            raise ApplicationError(
                f"the webhook host resolves to a non-public address ({', '.join(bad)}); "
                "set PORTAL_ALERT_WEBHOOK_ALLOW_PRIVATE to allow it"
            )
    return url


def redacted_url(url: str) -> str:
    """Scheme and host only: a webhook URL may carry its own secret in the path or query
    (chat services' incoming webhooks do), so the audit log and viewers see no more."""
    parts = urllib.parse.urlsplit(url)
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{parts.netloc}{rest}"


# --------------------------------------------------------------------------- management


def alert_webhook_set(*, deployment: Deployment, actor: Actor, url: str, enabled: bool = True,
                      rotate_secret: bool = False) -> tuple[AlertWebhook, str | None]:  # fmt: skip
    """Create or change the deployment's webhook. Returns it and its secret when the secret
    is new (shown once to the caller; stored for signing)."""
    url = check_url(url)
    new_secret = None
    with transaction.atomic():
        hook = AlertWebhook.objects.select_for_update().filter(deployment=deployment).first()
        created = hook is None
        if created or rotate_secret:
            new_secret = secrets.token_urlsafe(32)
        if created:
            hook = AlertWebhook(deployment=deployment, created_by_id=actor.id)
        hook.url, hook.enabled = url, bool(enabled)
        if new_secret:
            hook.secret = new_secret
        hook.save()
        audit_record(
            actor=actor,
            action="alert_webhook.set",
            target=deployment,
            details={"url": redacted_url(url), "enabled": hook.enabled, "created": created,
                     "secret_rotated": bool(new_secret and not created)},
        )  # fmt: skip
    return hook, new_secret


def alert_webhook_delete(*, deployment: Deployment, actor: Actor) -> bool:
    with transaction.atomic():
        deleted, _ = AlertWebhook.objects.filter(deployment=deployment).delete()
        if deleted:
            audit_record(actor=actor, action="alert_webhook.deleted", target=deployment)
    return bool(deleted)


# --------------------------------------------------------------------------- delivery


def payload(alert: Alert, event: str) -> dict[str, Any]:
    return {
        "event": f"alert.{event}",
        "portal": settings.PORTAL_INSTANCE,
        "sent_at": timezone.now().isoformat(),
        "alert": {
            "id": alert.pk,
            "rule": alert.rule_id,
            "deployment": alert.deployment.name,
            "kind": alert.kind,
            "state": "firing" if event == "fired" else "resolved",
            "value": alert.value,
            "threshold": alert.threshold,
            "window_minutes": alert.rule.window_minutes if alert.rule else None,
            "message": alert.message,
            "fired_at": alert.fired_at.isoformat(),
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
            "resolved_value": alert.resolved_value,
        },
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, PLR0913
        return None  # a 3xx is answered as itself: a failure, never followed


_opener = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retry_in: float | None = None  # seconds to the next attempt; None: no retry
    error: str = ""


def post(url: str, secret: str, body: bytes, *, delivery: str, event: str) -> tuple[int, str]:
    """One signed POST: (status, error text); status 0: no answer."""
    ts = int(time.time())
    request = urllib.request.Request(  # noqa: S310 - scheme checked by check_url
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "model-portal-alerts/1",
            SIGNATURE_HEADER: sign(secret, ts, body),
            TIMESTAMP_HEADER: str(ts),
            "X-Portal-Event": event,
            "X-Portal-Delivery": delivery,
        },
    )
    timeout = float(settings.PORTAL_ALERT_WEBHOOK_TIMEOUT)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        snippet = exc.read(200).decode(errors="replace").strip()
        return exc.code, f"HTTP {exc.code}" + (f": {snippet}" if snippet else "")
    except (OSError, ValueError) as exc:
        return 0, f"no answer: {type(exc).__name__}: {exc}"[:300]


def _retryable(status: int) -> bool:
    return status == 0 or status >= 500 or status in (408, 425, 429)


def alert_deliver(*, alert_id: int, event: str, attempt: int = 1) -> Outcome:
    """Attempt number `attempt` to post `event` ("fired"/"resolved") of an alert. Stores the
    delivery state on the alert; says whether and when to try again."""
    alert = Alert.objects.select_related("deployment", "rule").filter(pk=alert_id).first()
    if alert is None:
        return Outcome(False, error="alert gone")
    if alert.delivery_event and alert.delivery_event != event:
        return Outcome(False, error="superseded")  # the resolution's delivery took over
    hook = AlertWebhook.objects.filter(deployment=alert.deployment, enabled=True).first()
    if hook is None:
        Alert.objects.filter(pk=alert.pk).update(
            delivery_status=Alert.Delivery.NONE, delivery_error="no enabled webhook"
        )
        return Outcome(False, error="no enabled webhook")
    body = json.dumps(payload(alert, event), separators=(",", ":")).encode()
    try:
        check_url(hook.url)
        status, error = post(hook.url, hook.secret, body, delivery=f"{alert.pk}.{event}",
                             event=f"alert.{event}")  # fmt: skip
    except ApplicationError as exc:
        status, error = -1, exc.message  # refused before sending: not worth retrying
    now = timezone.now()
    fields: dict[str, Any] = {"delivery_attempts": attempt, "delivery_event": event}
    if 200 <= status < 300:
        fields |= {"delivery_status": Alert.Delivery.DELIVERED, "delivered_at": now,
                   "delivery_error": ""}  # fmt: skip
        outcome = Outcome(True)
    elif status != -1 and _retryable(status) and attempt <= settings.PORTAL_ALERT_WEBHOOK_RETRIES:
        wait = backoff_seconds(attempt)
        fields |= {"delivery_status": Alert.Delivery.PENDING,
                   "delivery_error": f"attempt {attempt}: {error}; next in {wait:g} s"}  # fmt: skip
        outcome = Outcome(False, retry_in=wait, error=error)
    else:
        fields |= {"delivery_status": Alert.Delivery.FAILED,
                   "delivery_error": f"attempt {attempt}: {error}"[:1000]}  # fmt: skip
        outcome = Outcome(False, error=error)
    Alert.objects.filter(pk=alert.pk, delivery_event__in=[event, ""]).update(**fields)
    level = logging.INFO if outcome.delivered else logging.WARNING
    log.log(level, "alert %s %s webhook delivery attempt %s: %s", alert.pk, event, attempt,
            "delivered" if outcome.delivered else error)  # fmt: skip
    return outcome
