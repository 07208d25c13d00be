"""``manage.py inbox_status``: what the inbox holds, for people and (``--json``) scripts."""

import logging
from typing import Any

from django.core.management.base import BaseCommand

from inbox import gauges, operations, topology
from inbox_outbox.commandkit import (
    Threshold,
    add_check_arguments,
    check_thresholds,
    write_status,
)

logger = logging.getLogger(__name__)

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
        report["dead_letters"] = _dead_letters()
        write_status(self, report, as_json=options["json"], groups=("consumers", "topics"))


def _dead_letters() -> int | str | None:
    """The dead-letter queue's depth; None for classic queues (there is none)."""
    try:
        found = topology.dead_letters()
    except Exception as exc:  # the broker is down: the database's counts still help
        logger.debug("inbox_status: dead-letter queue not readable", exc_info=True)
        return f"unknown (broker unavailable: {exc})"
    if found.queue is None:
        return None
    return "not declared yet" if found.depth is None else found.depth
