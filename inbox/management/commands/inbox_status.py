"""``manage.py inbox_status``: what the inbox holds, for people and (``--json``) scripts."""

from typing import Any

from django.core.management.base import BaseCommand

from inbox import operations, topology
from inbox_outbox.commandkit import write_status


class Command(BaseCommand):
    help = (
        "Counts per status, consumer and topic, the oldest open message's age, recent "
        "failures, and the depth of the service's dead-letter queue (quorum queues)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        report = operations.status()
        report["dead_letters"] = topology.dead_letters_shown()
        write_status(self, report, as_json=options["json"], groups=("consumers", "topics"))
