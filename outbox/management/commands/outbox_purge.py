"""``manage.py outbox_purge``: delete old sent and expired messages, in batches."""

from typing import Any

from django.core.management.base import BaseCommand
from django.db.models.functions import Now

from inbox_outbox.commandkit import add_purge_arguments, check_purge_arguments
from outbox import operations
from outbox.models import OutboxMessage, Status


class Command(BaseCommand):
    help = (
        "Delete outbox rows older than --older-than-days. Only sent and expired rows by "
        "default; dead rows need --include-dead; pending and failed rows are never purged."
    )

    def add_arguments(self, parser: Any) -> None:
        add_purge_arguments(parser)
        parser.add_argument(
            "--include-dead",
            action="store_true",
            help="Also delete dead rows (they will never be sent).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        age = check_purge_arguments(options)
        statuses = [*operations.PURGEABLE, *([Status.DEAD] if options["include_dead"] else [])]
        outcome = operations.purge(
            OutboxMessage.objects.filter(created_at__lt=Now() - age),
            statuses=statuses,
            batch_size=options["batch_size"],
            dry_run=options["dry_run"],
        )
        verb = "would delete" if options["dry_run"] else "deleted"
        self.stdout.write(
            f"{verb} {outcome.done} outbox row(s) ({', '.join(statuses)}) older than {options['older_than_days']:g} day(s)."
        )
