from http import HTTPStatus

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db import transaction

from portal import users
from portal.audit import Actor, audit_record
from portal.models import AuditEvent

User = get_user_model()


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the audit log is append-only, even for superusers."""

    list_display = ("created_at", "actor_name", "action", "target_type", "target_name", "outcome")
    list_filter = ("outcome", "target_type")
    search_fields = ("actor_name", "action", "target_name", "request_id")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AuditedUserAdmin(UserAdmin):
    """Django's user admin, writing the audit events the portal's users page writes.

    The admin wraps each save in one transaction, so the events commit with the change:
    save_model records creation and (de)activation, save_related compares the roles before
    and after the groups are saved, and the password form's success is recorded around
    Django's own view.
    """

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        actor = Actor.from_request(request)
        if not change:
            audit_record(actor=actor, action="user.created", target=obj, details={"via": "admin"})
        elif "is_active" in form.changed_data:
            action = "user.reactivated" if obj.is_active else "user.deactivated"
            audit_record(actor=actor, action=action, target=obj, details={"via": "admin"})

    def save_related(self, request, form, formsets, change):
        before = users.user_role_names(form.instance) if change else []
        super().save_related(request, form, formsets, change)
        users.user_audit_roles_changed(
            actor=Actor.from_request(request), user=form.instance, before=before
        )

    def user_change_password(self, request, id, form_url=""):
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            # Django's view redirects only after the new password is saved.
            if request.method == "POST" and response.status_code == HTTPStatus.FOUND:
                user = self.get_object(request, unquote(id))
                users.user_audit_password_changed(actor=Actor.from_request(request), user=user)
        return response


admin.site.unregister(User)
admin.site.register(User, AuditedUserAdmin)
