"""``manage.py outbox_status``: what the outbox holds, for people and (``--json``) scripts."""

from typing import Any

from django.core.management.base import BaseCommand

from inbox_outbox.commandkit import write_status
from outbox import operations


class Command(BaseCommand):
    help = (
        "Counts per status and topic, the oldest unsent message's age, failures in the last hour."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        write_status(self, operations.status(), as_json=options["json"], groups=("topics",))
