"""What deployments_app puts on the core's pages (portal.registry): the dashboard's counts,
deployment cards, drift cards and traffic charts, and the audit page's prediction calls tab."""

from __future__ import annotations

from django.http import HttpRequest

from deployments_app import stats
from deployments_app.monitoring import drift
from portal.registry import AuditTab, Context, Panel, register_audit_tab, register_panel

# The cards' call figures are over the last hour, whatever range the charts show.
CARDS_WINDOW_SECONDS = 3600


def _range(request: HttpRequest) -> str:
    value = request.GET.get("range", stats.DEFAULT_RANGE)
    return value if value in stats.RANGES else stats.DEFAULT_RANGE


def overview_context(request: HttpRequest) -> Context:
    figures = stats.deployment_call_stats(window_seconds=CARDS_WINDOW_SECONDS)
    return {
        "summary": stats.dashboard_counts(),
        "overall": stats.overall_stats(figures),
        "cards": stats.deployment_cards(stats=figures),
    }


def charts_context(request: HttpRequest) -> Context:
    deployment = request.GET.get("deployment", "")
    return {
        "series": stats.prediction_series(range_key=_range(request), deployment_name=deployment),
        "chart_deployment": deployment,
        "ranges": list(stats.RANGES),
    }


def _poll_overview(request: HttpRequest, context: Context) -> Context:
    return {"summary": context["summary"]}


def _poll_charts(request: HttpRequest, context: Context) -> Context:
    return {"series": charts_context(request)["series"]}


def register() -> None:
    register_panel(
        Panel(
            name="overview",
            template="deployments_app/_panel_overview.html",
            context=overview_context,
            order=10,
            poll=_poll_overview,
        )
    )
    register_panel(
        Panel(
            name="drift",
            template="deployments_app/_drift_card.html",
            context=lambda request: drift.drift_panel_context(request),
            order=50,
        )
    )
    register_panel(
        Panel(
            name="charts",
            template="deployments_app/_panel_charts.html",
            context=charts_context,
            order=100,
            live=False,
            poll=_poll_charts,
        )
    )
    register_audit_tab(
        AuditTab(
            name="calls",
            label="Prediction calls",
            noun="call",
            queryset=lambda filters: stats.prediction_log_list(filters=filters),
            columns=CALL_COLUMNS,
            table_template="deployments_app/_audit_calls.html",
            filters_template="deployments_app/_audit_calls_filters.html",
            order=20,
            context=lambda: {"deployment_names": stats.deployment_names()},
        )
    )


CALL_COLUMNS = (
    "id",
    "created_at",
    "deployment_name",
    "model_name",
    "version_number",
    "caller",
    "api_key_prefix",
    "status_code",
    "latency_ms",
    "upstream_ms",
    "rows",
    "client_ip",
    "request_id",
    "replica",
    "error",
    "explained",
)
