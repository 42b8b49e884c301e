"""The portal's URLs plus views that fail on purpose (tests/portal/test_production.py)."""

from django.core.exceptions import PermissionDenied
from django.urls import path

from portal.urls import *  # noqa: F403 - the portal's patterns and its error handlers
from portal.urls import urlpatterns as portal_urlpatterns


def boom(request):
    raise RuntimeError("boom: a bug in a view")


def forbidden(request):
    raise PermissionDenied("not for you")


urlpatterns = [
    path("boom/", boom),
    path("api/v1/boom", boom),
    path("forbidden/", forbidden),
    path("api/v1/forbidden", forbidden),
    *portal_urlpatterns,
]
