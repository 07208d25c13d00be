"""``manage.py inbox_dead_letters``: how many messages the broker dead-lettered for this
service, and (``--requeue``) moving them back to the service queue."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inbox import topology


class Command(BaseCommand):
    help = (
        "Show the depth of the service's dead-letter queue (quorum queues: messages past the "
        "delivery limit, or refused unstorable); with --requeue, move them back to the "
        "service queue, where the inbox deduplicates any it already holds."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--requeue", action="store_true", help="Move dead-lettered messages back."
        )
        parser.add_argument(
            "--limit", type=int, default=None, help="Move at most this many (default: all)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        found = topology.dead_letters()
        if found.queue is None:
            self.stdout.write(
                "QUEUE_TYPE is classic: the service queue has no dead-letter queue "
                "(classic queues have no delivery limit)."
            )
            return
        depth = "not declared yet (no worker has started)" if found.depth is None else found.depth
        self.stdout.write(f"dead-letter queue {found.queue}: {depth}")
        if not options["requeue"] or not found.depth:
            return
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be a positive number of messages.")
        try:
            moved = topology.requeue_dead_letters(limit=options["limit"])
        except topology.RequeueStopped as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"moved back to the service queue: {moved}")
