"""``manage.py outbox_replay``: publish messages again, with the same ids."""

from typing import Any

from django.core.management.base import BaseCommand

from inbox_outbox.commandkit import add_selection_arguments, select
from outbox import operations
from outbox.models import OutboxMessage, Status


class Command(BaseCommand):
    help = "Publish selected outbox messages again (same ids). Sent, failed, dead and expired rows apply."

    def add_arguments(self, parser: Any) -> None:
        add_selection_arguments(parser, consumer=False)

    def handle(self, *args: Any, **options: Any) -> None:
        queryset = select(
            OutboxMessage.objects.all(),
            options,
            id_field="id",
            time_field="created_at",
            allowed_statuses=Status.values,
        )
        outcome = operations.replay(queryset, dry_run=options["dry_run"])
        verb = "would replay" if options["dry_run"] else "replayed"
        self.stdout.write(
            f"{verb} {outcome.done} message(s); skipped {outcome.skipped} still pending."
        )
