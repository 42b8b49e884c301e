from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal core"

    def ready(self) -> None:
        # Django's auth signals are the only hook for login/logout/failed-login events.
        from portal import auth_events  # noqa: F401
        from portal.registry import AuditTab, register_audit_tab
        from portal.selectors import audit_event_list
        from portal.views import EVENT_COLUMNS

        register_audit_tab(
            AuditTab(
                name="events",
                label="Audit events",
                noun="event",
                queryset=lambda filters: audit_event_list(filters=filters),
                columns=EVENT_COLUMNS,
                table_template="portal/_audit_events.html",
                filters_template="portal/_audit_events_filters.html",
                order=0,
            )
        )
