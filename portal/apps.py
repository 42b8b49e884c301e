from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal core"

    def ready(self) -> None:
        # Django's auth signals are the only hook for login/logout/failed-login events.
        from portal import auth_events  # noqa: F401
