import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from portal.audit import Actor, audit_record
from portal.roles import ADMIN


class Command(BaseCommand):
    help = "Create the first admin account when no superuser exists."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("PORTAL_ADMIN_USER", "admin"))

    def handle(self, *args, username, **options):
        User = get_user_model()  # noqa: N806
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write("admin account exists")
            return
        password = os.environ.get("PORTAL_ADMIN_PASSWORD") or secrets.token_urlsafe(16)
        with transaction.atomic():
            user = User.objects.create_superuser(username=username, password=password)
            user.groups.add(Group.objects.get(name=ADMIN))
            audit_record(
                actor=Actor.system(),
                action="user.created",
                target=user,
                target_type="user",
                details={"role": ADMIN, "superuser": True},
            )
        if os.environ.get("PORTAL_ADMIN_PASSWORD"):
            self.stdout.write(
                f"created admin account '{username}' (password from PORTAL_ADMIN_PASSWORD)"
            )
        else:
            self.stdout.write(f"created admin account '{username}' with password: {password}")
            self.stdout.write("  (shown once; change it after the first login)")
