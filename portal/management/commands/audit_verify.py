from django.core.management.base import BaseCommand, CommandError

from portal.audit import Actor, audit_checkpoint, audit_verify


class Command(BaseCommand):
    help = (
        "Verify the audit log's chain from the first event, against the latest checkpoint "
        "(PORTAL_AUDIT_CHECKPOINT_FILE), report the first broken link, and when it holds, "
        "append a new checkpoint of the head."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-checkpoint",
            action="store_true",
            help="only verify: write no audit event and no checkpoint",
        )

    def handle(self, *args, **options):
        if options["no_checkpoint"]:
            report, checkpoint = audit_verify(), None
        else:
            report, checkpoint = audit_checkpoint(
                actor=Actor.system("manage.py audit_verify"), full=True
            )
        if not report.ok:
            raise CommandError(
                f"audit chain broken at event id={report.broken_id}: {report.reason} "
                f"({report.checked} events verified before it)"
            )
        against = (
            f"; matches the checkpoint of {report.checkpoint['at']}" if report.checkpoint else ""
        )
        unsigned = f" ({report.unsigned} from before the audit key)" if report.unsigned else ""
        self.stdout.write(
            self.style.SUCCESS(f"audit chain intact: {report.checked} events{unsigned}{against}")
        )
        if checkpoint is not None:
            self.stdout.write(
                f"checkpoint written: {checkpoint.count} events, head id {checkpoint.head_id}"
            )
