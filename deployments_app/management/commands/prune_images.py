from django.core.management.base import BaseCommand

from deployments_app.services import images_prune


class Command(BaseCommand):
    help = (
        "Remove model images (process builds) that no build record keeps; images a replica "
        "runs stay. Celery beat runs this every PORTAL_IMAGE_PRUNE_SECONDS."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--min-age",
            type=float,
            default=None,
            help="seconds an image must have existed (default: PORTAL_IMAGE_PRUNE_MIN_AGE)",
        )

    def handle(self, *args, min_age=None, **options):
        summary = images_prune(min_age_s=min_age)
        for ref in summary["removed"]:
            self.stdout.write(f"removed {ref}")
        freed = summary["freed_bytes"] / 1e6
        self.stdout.write(
            self.style.SUCCESS(
                f"{len(summary['removed'])} image(s) removed ({', '.join(summary['runtimes'])}), "
                f"{freed:.1f} MB freed"
            )
        )
