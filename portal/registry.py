"""Places on the core's pages that apps fill, so `portal` knows no app.

The same idea as `portal.health.register_check`: an app registers, in its AppConfig.ready(),

- dashboard panels: a template and the function that gives its context. Live panels are
  rendered inside the fragment the dashboard re-fetches on every poll (`portal/_dashboard_live
  .html`); the others once, with the page (the charts). Any panel may add figures to the
  poll's JSON (`poll`); a live one reads them from its context, so nothing is read twice;
- audit tabs: a queryset filtered by the audit filters, the columns of its CSV export and the
  templates of its filter fields and its table.

Panels are shown in `order`, lowest first; a later registration under the same name replaces
the earlier one (tests, or an app that overrides another's panel).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest

Context = dict[str, Any]


@dataclass(frozen=True)
class Panel:
    name: str
    template: str
    context: Callable[[HttpRequest], Context]
    order: int = 100
    live: bool = True
    poll: Callable[[HttpRequest, Context], Context] | None = None


@dataclass(frozen=True)
class AuditTab:
    name: str
    label: str
    noun: str  # "event", "call": the result count says "3 calls"
    queryset: Callable[[Mapping[str, Any]], QuerySet]
    columns: tuple[str, ...]  # of the CSV export, in order
    table_template: str
    filters_template: str
    order: int = 100
    context: Callable[[], Context] | None = None  # what the two templates need beyond the rows


_PANELS: dict[str, Panel] = {}
_AUDIT_TABS: dict[str, AuditTab] = {}


def register_panel(panel: Panel) -> None:
    _PANELS[panel.name] = panel


def register_audit_tab(tab: AuditTab) -> None:
    _AUDIT_TABS[tab.name] = tab


def panels(*, live: bool | None = None) -> list[Panel]:
    chosen = (p for p in _PANELS.values() if live is None or p.live == live)
    return sorted(chosen, key=lambda p: (p.order, p.name))


def dashboard_context(request: HttpRequest, *, live_only: bool = False) -> Context:
    """The page's context: every panel's own, plus the panels themselves in their places.

    Panels share one template context (a panel's names are its own business: keep them
    distinct); `poll_data` reads the same context back for the JSON."""
    chosen = panels(live=True) if live_only else panels()
    context: Context = {}
    for panel in chosen:
        context |= panel.context(request)
    context["live_panels"] = [p for p in chosen if p.live]
    context["page_panels"] = [p for p in chosen if not p.live]
    return context


def poll_data(request: HttpRequest, context: Context) -> Context:
    """What the panels add to the dashboard poll's JSON (`context`: the live panels')."""
    data: Context = {}
    for panel in panels():
        if panel.poll is not None:
            data |= panel.poll(request, context)
    return data


def audit_tabs() -> list[AuditTab]:
    return sorted(_AUDIT_TABS.values(), key=lambda t: (t.order, t.name))


def audit_tab(name: str | None) -> AuditTab:
    """The tab called `name`, else the first one (the core's audit events)."""
    tabs = audit_tabs()
    return next((t for t in tabs if t.name == name), tabs[0])
