"""``manage.py inbox_purge``: delete old processed and rejected messages, in batches."""

from typing import Any

from django.core.management.base import BaseCommand
from django.db.models.functions import Now

from inbox import operations
from inbox.models import InboxMessage, Status
from inbox_outbox.commandkit import add_purge_arguments, check_purge_arguments
from inbox_outbox.conf import get_settings


class Command(BaseCommand):
    help = (
        "Delete inbox rows older than --older-than-days: processed and rejected rows. "
        "Waiting, failed and dead rows need --include-open / --include-dead. Processed and "
        "dead rows inside DEDUP_WINDOW_DAYS are kept unless --ignore-dedup-window: they make "
        "late redeliveries no-ops. Rejected rows are not kept for it (a redelivery of one is "
        "rejected again)."
    )

    def add_arguments(self, parser: Any) -> None:
        add_purge_arguments(parser)
        parser.add_argument("--include-dead", action="store_true", help="Also delete dead rows.")
        parser.add_argument(
            "--include-open",
            action="store_true",
            help="Also delete waiting and failed rows: they will never be handled.",
        )
        parser.add_argument(
            "--ignore-dedup-window",
            action="store_true",
            help="Also delete processed and dead rows inside the dedup window: a "
            "redelivery of one of them would then be handled again.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        age = check_purge_arguments(options)
        statuses = [*operations.PURGEABLE]
        statuses += [Status.DEAD] if options["include_dead"] else []
        statuses += [Status.WAITING, Status.FAILED] if options["include_open"] else []
        outcome = operations.purge(
            InboxMessage.objects.filter(received_at__lt=Now() - age),
            statuses=statuses,
            respect_dedup_window=not options["ignore_dedup_window"],
            batch_size=options["batch_size"],
            dry_run=options["dry_run"],
        )
        verb = "would delete" if options["dry_run"] else "deleted"
        window = (
            ""
            if options["ignore_dedup_window"]
            else (
                f"; processed and dead rows inside the {get_settings().dedup_window_days:g}-day "
                "dedup window kept"
            )
        )
        self.stdout.write(
            f"{verb} {outcome.done} inbox row(s) ({', '.join(statuses)}) older than "
            f"{options['older_than_days']:g} day(s){window}."
        )
