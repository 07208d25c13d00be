"""``manage.py inbox_replay``: handle failed or dead messages again."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inbox import operations
from inbox.models import InboxMessage, Status
from inbox.registry import registry
from inbox_outbox.commandkit import add_selection_arguments, select


class Command(BaseCommand):
    help = "Handle selected failed or dead inbox messages again, now, through their handlers."

    def add_arguments(self, parser: Any) -> None:
        add_selection_arguments(parser, consumer=True)

    def handle(self, *args: Any, **options: Any) -> None:
        if options.get("consumer"):
            check_consumer(options["consumer"])
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
        if outcome.deferred:
            line += (
                f" {outcome.deferred} made due for the retry sweep (at most {operations.RUN_NOW} "
                "handlers run here)."
            )
        self.stdout.write(line)


def check_consumer(consumer: str) -> None:
    """Refuse a consumer that no handler has and no row has: a typo would replay nothing."""
    handlers = sorted(h.consumer for h in registry.all())
    if consumer in handlers or InboxMessage.objects.filter(consumer=consumer).exists():
        return
    raise CommandError(
        f"--consumer {consumer!r} is neither a registered handler's consumer nor in the inbox. "
        "A consumer is <SERVICE>:<handler name>; this service's are: "
        f"{', '.join(handlers) or '(no handlers registered)'}."
    )
