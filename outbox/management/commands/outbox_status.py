"""``manage.py outbox_status``: what the outbox holds, for people and (``--json``) scripts;
with ``--check``, a non-zero exit when a threshold is crossed."""

from typing import Any

from django.core.management.base import BaseCommand

from inbox_outbox.commandkit import (
    Threshold,
    add_check_arguments,
    check_thresholds,
    write_status,
)
from outbox import gauges, operations

THRESHOLDS: list[Threshold] = [
    ("--max-unsent", "outbox_unsent_messages", "Most unsent messages allowed (the backlog)."),
    (
        "--max-age",
        "outbox_oldest_unsent_age_seconds",
        "Oldest unsent message allowed, in seconds (database clock).",
    ),
    ("--max-dead", "outbox_dead_messages", "Most dead messages allowed (all topics)."),
]


class Command(BaseCommand):
    help = (
        "Counts per status and topic, the oldest unsent message's age, failures in the last "
        "hour. With --check and thresholds, exit status 2 when one is crossed."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON.")
        add_check_arguments(parser, THRESHOLDS)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["check"]:
            check_thresholds(self, gauges.readings(), THRESHOLDS, options)
            return
        write_status(self, operations.status(), as_json=options["json"], groups=("topics",))
