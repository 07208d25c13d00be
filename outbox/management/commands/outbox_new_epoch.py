"""``manage.py outbox_new_epoch``: restart every per-key counter in a new epoch."""

from typing import Any

from django.core.management.base import BaseCommand

from outbox import operations


class Command(BaseCommand):
    help = (
        "Start every (topic, key) sequence again at 1 in a new epoch. Run it once after "
        "restoring the outbox's database from a backup: the counters then hand out numbers "
        "consumers already saw, which they would keep as stale instead of running."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        moved = operations.new_epoch()
        self.stdout.write(f"{moved} counter(s) moved to a new epoch; their keys restart at 1.")
