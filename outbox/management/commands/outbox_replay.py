"""``manage.py outbox_replay``: publish messages again, with the same ids."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inbox_outbox.commandkit import add_selection_arguments, select
from outbox import operations
from outbox.exceptions import ReplayRefused
from outbox.models import OutboxMessage, Status


class Command(BaseCommand):
    help = (
        "Publish selected outbox messages again (same ids). Sent, failed, dead and expired "
        "rows apply; rows a relay is sending right now, and cancelled ones, are skipped. Refused for messages sent "
        "before the dedup window or expired, unless --past-dedup-window / --clear-expiry."
    )

    def add_arguments(self, parser: Any) -> None:
        add_selection_arguments(parser, consumer=False)
        parser.add_argument(
            "--past-dedup-window",
            action="store_true",
            help="Also replay messages sent longer ago than DEDUP_WINDOW_DAYS: consumers may "
            "have purged their record of them and will handle them again.",
        )
        parser.add_argument(
            "--clear-expiry",
            action="store_true",
            help="Also replay expired messages, sending them without an expiry.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        queryset = select(
            OutboxMessage.objects.all(),
            options,
            id_field="id",
            time_field="created_at",
            allowed_statuses=Status.values,
        )
        try:
            outcome = operations.replay(
                queryset,
                past_dedup_window=options["past_dedup_window"],
                clear_expiry=options["clear_expiry"],
                dry_run=options["dry_run"],
            )
        except ReplayRefused as refused:
            raise CommandError(str(refused)) from None
        verb = "would replay" if options["dry_run"] else "replayed"
        self.stdout.write(
            f"{verb} {outcome.done} message(s); skipped {outcome.skipped} still pending or "
            "scheduled, being sent right now, or cancelled (publish those again)."
        )
