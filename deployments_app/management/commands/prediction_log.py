from django.core.management.base import BaseCommand

from deployments_app.retention import prediction_log_retention_run
from deployments_app.rollups import prediction_rollups_fold


class Command(BaseCommand):
    help = (
        "Fold closed minutes of the prediction log into rollups, then (with --retention) make "
        "the coming days' partitions and remove expired rows and rollups. Celery beat runs "
        "both every PORTAL_ROLLUP_SECONDS and PORTAL_RETENTION_SECONDS."
    )

    def add_arguments(self, parser):
        parser.add_argument("--retention", action="store_true", help="run retention too")

    def handle(self, *args, retention=False, **options):
        fold = prediction_rollups_fold()
        self.stdout.write(f"folded {fold.calls} calls up to {fold.folded_until}")
        if retention:
            report = prediction_log_retention_run()
            self.stdout.write(
                self.style.SUCCESS(
                    f"{report.rows_removed} raw rows removed "
                    f"({len(report.partitions_dropped)} partitions dropped), "
                    f"{report.minute_rollups_removed + report.rollups_removed} rollups removed, "
                    f"{len(report.partitions_created)} partitions made"
                )
            )
