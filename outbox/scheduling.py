"""Delayed messages on the relay's side: promoting the scheduled rows that fell due, and
when the next one does, both on the database's clock.

A message published with ``delay`` or ``deliver_at`` is stored ``scheduled`` with its due
time in ``available_at``. It is outside the claim's indexes (``outbox_unsent_*``), so however
many are scheduled the claim reads none of them; each claim first promotes at most
``sql.PROMOTE_STEP`` due ones to ``pending`` (``outbox_scheduled_due_idx``), and then claims
them like any other row. A keyed one holds its key back meanwhile (``sql.key_runs``).
"""

from __future__ import annotations

from django.db import connections

from . import sql


def promote_due(*, using: str) -> int:
    """Make up to ``sql.PROMOTE_STEP`` due scheduled rows pending, the earliest due first;
    return how many. Run it in the claim's transaction, so that they are claimed at once."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(sql.promote_due(connection.vendor), [sql.PROMOTE_STEP])
        return max(int(cursor.rowcount), 0)


def seconds_to_next_due(*, using: str) -> float | None:
    """Seconds until the earliest scheduled message falls due, on the database's clock (0
    or less when one is due now), or ``None`` when none is scheduled."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(sql.seconds_to_next_due(connection.vendor))
        (seconds,) = cursor.fetchone()
    return None if seconds is None else float(seconds)
