"""Template tags of the deployments app, for pages of other apps that offer its commands."""

from __future__ import annotations

from django import template

from deployments_app.runtimes import allowed_runtimes as _allowed

register = template.Library()


@register.simple_tag
def allowed_runtimes() -> list[str]:
    """The runtimes a deployer may choose (PORTAL_ALLOWED_RUNTIMES)."""
    return _allowed()
