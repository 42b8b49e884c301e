from django.contrib import admin

from models_app.models import ModelAlias, ModelVersion, RegisteredModel


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at")
    search_fields = ("name",)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    """Read-only: versions change only through the services (which audit)."""

    list_display = ("model", "number", "status", "approval", "sklearn_version", "created_at")
    list_filter = ("status", "approval")

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False


@admin.register(ModelAlias)
class ModelAliasAdmin(admin.ModelAdmin):
    list_display = ("model", "name", "version")

    def has_change_permission(self, request, obj=None):
        return False
