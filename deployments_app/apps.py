from django.apps import AppConfig


class DeploymentsAppConfig(AppConfig):
    name = "deployments_app"
    verbose_name = "Deployments"

    def ready(self) -> None:
        from deployments_app import panels, runtimes
        from portal.health import register_check

        register_check("runtime", runtimes.check_runtime)
        panels.register()
