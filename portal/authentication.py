"""API authentication: personal access tokens (`Authorization: Bearer pt_...`), and DRF's
basic auth (off with PORTAL_API_BASIC_AUTH=false) with django-axes lockouts answered as 429.

Apart from portal.api: DRF imports authentication classes while its views module loads.
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.authentication import BasicScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions, status
from rest_framework.authentication import (
    BaseAuthentication,
    BasicAuthentication,
    get_authorization_header,
)

from portal.roles import scope_capabilities


class LockoutBasicAuthentication(BasicAuthentication):
    """Basic auth whose refusal says 429 once django-axes locked the account or address out
    (a locked-out caller's right password is refused too, until the cooloff ends)."""

    def authenticate(self, request):
        if not settings.PORTAL_API_BASIC_AUTH:
            return None
        return super().authenticate(request)

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


class TokenRefused(exceptions.APIException):
    """A 401 even though the session authenticator comes first (DRF would turn its own
    AuthenticationFailed into a 403 for want of a WWW-Authenticate header there)."""

    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "invalid token"
    default_code = "authentication_failed"
    auth_header = 'Bearer realm="api"'


class AccessTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer pt_<prefix>_<secret>`: the token's owner, limited to the token's
    scopes (put on the user object, which `portal.roles.user_can` consults). Other bearer
    values (prediction API keys) are not ours: the next authenticator, or anonymity."""

    keyword = b"bearer"

    def authenticate(self, request):
        from portal import tokens  # the models load after DRF imports this module

        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower() != self.keyword:
            return None
        raw = parts[1].decode("latin-1")
        if not raw.startswith(tokens.TOKEN_PREFIX):
            return None
        try:
            token = tokens.access_token_check(raw)
        except tokens.TokenRefused as exc:
            raise TokenRefused(str(exc)) from None
        user = token.user
        user._portal_token_capabilities = scope_capabilities(token.scopes)
        return user, token

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class AccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "portal.authentication.AccessTokenAuthentication"
    name = "accessToken"
    priority = 0

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "pt_<prefix>_<secret>"}
