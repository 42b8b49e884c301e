"""Template tags of the deployments app, for pages of other apps that offer its commands."""

from __future__ import annotations

from django import template

from deployments_app.runtimes import allowed_runtimes as _allowed

register = template.Library()


@register.simple_tag
def allowed_runtimes() -> list[str]:
    """The runtimes a deployer may choose (PORTAL_ALLOWED_RUNTIMES)."""
    return _allowed()


@register.filter
def pct(fraction: float | None, digits: int = 1) -> str:
    """0.1234 -> "12.3%"; None -> "–"."""
    if fraction is None:
        return "–"
    return f"{float(fraction) * 100:.{int(digits)}f}%"
