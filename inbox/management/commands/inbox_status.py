"""``manage.py inbox_status``: what the inbox holds, for people and (``--json``) scripts."""

from typing import Any

from django.core.management.base import BaseCommand

from inbox import gauges, operations, topology
from inbox_outbox.commandkit import (
    Threshold,
    add_check_arguments,
    check_thresholds,
    write_status,
)

THRESHOLDS: list[Threshold] = [
    ("--max-dead", "inbox_dead_messages", "Most dead messages allowed (all topics)."),
    ("--max-failed-due", "inbox_failed_due_messages", "Most failed messages due for retry."),
    ("--max-waiting-keys", "inbox_waiting_keys", "Most streams with waiting messages."),
    (
        "--max-waiting-age",
        "inbox_oldest_waiting_age_seconds",
        "Oldest waiting message allowed, in seconds: a stuck key (database clock).",
    ),
]


class Command(BaseCommand):
    help = (
        "Counts per status, consumer and topic, the oldest open message's age, recent "
        "failures, and the depth of the service's dead-letter queue (quorum queues)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON.")
        add_check_arguments(parser, THRESHOLDS)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["check"]:
            check_thresholds(self, gauges.readings(), THRESHOLDS, options)
            return
        report = operations.status()
        report["dead_letters"] = topology.dead_letters_shown()
        write_status(self, report, as_json=options["json"], groups=("consumers", "topics"))
