from django.apps import AppConfig


class ModelsAppConfig(AppConfig):
    name = "models_app"
    verbose_name = "Model registry"

    def ready(self) -> None:
        from models_app import checks  # registers the artifact-encryption system check
        from portal.health import register_check

        register_check("artifact_key", checks.readiness)
