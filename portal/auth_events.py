"""Audit rows for login, logout, failed login and lockout (only signals announce these)."""

from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from portal.audit import Actor, audit_record, client_ip
from portal.models import AuditEvent


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs):
    audit_record(
        actor=Actor.from_request(request), action="auth.login", target=user, target_type="user"
    )


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs):
    if user is None:
        return
    actor = Actor(
        id=user.pk,
        name=user.get_username(),
        client_ip=client_ip(request),
        request_id=getattr(request, "request_id", ""),
    )
    audit_record(actor=actor, action="auth.logout", target=user, target_type="user")


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs):
    # The password is never recorded: Django already masks it, and we keep only the username.
    username = str(credentials.get("username", ""))[:150]
    actor = (
        Actor(
            id=None,
            name=username or "anonymous",
            client_ip=client_ip(request),
            request_id=getattr(request, "request_id", ""),
        )
        if request is not None
        else Actor.system(name=username or "anonymous")
    )
    audit_record(
        actor=actor,
        action="auth.login_failed",
        target_type="user",
        target_name=username,
        outcome=AuditEvent.Outcome.FAILURE,
    )


@receiver(user_locked_out)
def _locked_out(sender, request, username, ip_address, **kwargs):
    audit_record(
        actor=Actor(
            id=None,
            name=str(username or "anonymous")[:150],
            client_ip=ip_address or None,
            request_id=getattr(request, "request_id", ""),
        ),
        action="auth.locked_out",
        target_type="user",
        target_name=str(username or "")[:150],
        outcome=AuditEvent.Outcome.DENIED,
        details={"failure_limit": settings.AXES_FAILURE_LIMIT},
    )
