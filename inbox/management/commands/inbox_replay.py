"""``manage.py inbox_replay``: handle failed or dead messages again."""

from typing import Any

from django.core.management.base import BaseCommand

from inbox import operations
from inbox.models import InboxMessage, Status
from inbox_outbox.commandkit import add_selection_arguments, select


class Command(BaseCommand):
    help = "Handle selected failed or dead inbox messages again, now, through their handlers."

    def add_arguments(self, parser: Any) -> None:
        add_selection_arguments(parser, consumer=True)

    def handle(self, *args: Any, **options: Any) -> None:
        queryset = select(
            InboxMessage.objects.all(),
            options,
            id_field="message_id",
            time_field="received_at",
            allowed_statuses=Status.values,
        )
        outcome = operations.replay(queryset, dry_run=options["dry_run"])
        verb = "would replay" if options["dry_run"] else "replayed"
        line = f"{verb} {outcome.done} message(s); skipped {outcome.skipped} not failed or dead."
        if outcome.failed_again:
            line += f" {outcome.failed_again} failed again."
        self.stdout.write(line)
