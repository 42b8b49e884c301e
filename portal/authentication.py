"""API authentication: DRF's basic auth, with django-axes lockouts answered as 429.

Apart from portal.api: DRF imports authentication classes while its views module loads.
"""

from __future__ import annotations

from drf_spectacular.authentication import BasicScheme
from rest_framework import exceptions
from rest_framework.authentication import BasicAuthentication


class LockoutBasicAuthentication(BasicAuthentication):
    """Basic auth whose refusal says 429 once django-axes locked the account or address out
    (a locked-out caller's right password is refused too, until the cooloff ends)."""

    def authenticate_credentials(self, userid, password, request=None):
        try:
            return super().authenticate_credentials(userid, password, request)
        except exceptions.AuthenticationFailed:
            if request is not None and getattr(request, "axes_locked_out", False):
                raise exceptions.Throttled(
                    detail="too many failed logins for this account or address; try later"
                ) from None
            raise


class LockoutBasicScheme(BasicScheme):
    """The OpenAPI schema: still plain HTTP basic auth."""

    target_class = "portal.authentication.LockoutBasicAuthentication"
    priority = 0
