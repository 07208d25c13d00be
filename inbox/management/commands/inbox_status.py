"""``manage.py inbox_status``: what the inbox holds, for people and (``--json``) scripts."""

from typing import Any

from django.core.management.base import BaseCommand

from inbox import operations
from inbox_outbox.commandkit import write_status


class Command(BaseCommand):
    help = "Counts per status, consumer and topic, the oldest open message's age, recent failures."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        write_status(
            self, operations.status(), as_json=options["json"], groups=("consumers", "topics")
        )
