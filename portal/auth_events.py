"""Audit rows for login, logout and failed login (Django only offers signals for these)."""

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
