"""manage.py rotate_artifact_key: rewrap every artifact's data key under the current key."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from models_app.artifact_keys import artifacts_rotate_key
from models_app.keyprovider import EnvKeyProvider, get_provider, parse_master_key
from portal.audit import Actor


class Command(BaseCommand):
    help = (
        "Rewrap the data key of every stored artifact under the current master key "
        "(PORTAL_ARTIFACT_KEY / PORTAL_ARTIFACT_KEY_FILE), opening them with the previous "
        "key(s) from PORTAL_ARTIFACT_KEY_PREVIOUS or --previous-key-file. Only the 512-byte "
        "headers are rewritten, never the artifacts' bodies; audited. Safe to run again."
    )
    # The check would refuse exactly the state this command repairs (old keys in use).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument(
            "--previous-key-file",
            action="append",
            default=[],
            metavar="PATH",
            help="a file holding a previous master key (repeatable); the env default provider",
        )

    def handle(self, *args, previous_key_file, **options):
        if previous_key_file:
            if settings.PORTAL_ARTIFACT_KEY_PROVIDER != "models_app.keyprovider.EnvKeyProvider":
                raise CommandError("--previous-key-file works with the environment key provider")
            base = EnvKeyProvider.from_settings()
            extra = []
            for path in previous_key_file:
                try:
                    text = Path(path).read_text()
                except OSError as exc:
                    raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
                extra.append(parse_master_key(text, f"the key file {path}"))
            provider = base.with_previous(extra)
        else:
            provider = get_provider()
        result = artifacts_rotate_key(
            provider=provider, actor=Actor.system("manage.py rotate_artifact_key")
        )
        for sha in result.restored:
            self.stdout.write(f"restored the journalled header of {sha[:12]} (torn write)")
        self.stdout.write(
            f"key {result.key_id}: {result.rewrapped} artifact(s) rewrapped, "
            f"{result.unchanged} already under it"
        )
        if result.failed:
            for sha, why in result.failed.items():
                self.stderr.write(f"{sha[:12]}: {why}")
            raise CommandError(f"{len(result.failed)} artifact(s) could not be rewrapped")
        self.stdout.write(
            self.style.SUCCESS(
                "every artifact is under the current key: PORTAL_ARTIFACT_KEY_PREVIOUS may go"
            )
        )
