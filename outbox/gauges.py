"""The outbox's gauges for :mod:`inbox_outbox.metrics`: the backlog, its age, dead rows.

Each is one query the outbox's indexes answer without reading the table: the unsent rows
through the two partial indexes on unsent rows, dead rows through (status, created_at). Ages
are on the database's clock. ``bench/gauges.py`` measures them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.db.models import Count, DurationField, ExpressionWrapper, Min
from django.db.models.functions import Now

from inbox_outbox.metrics import Reading

from .models import OutboxMessage, Status


def _seconds(age: object) -> float:
    return age.total_seconds() if isinstance(age, dt.timedelta) else 0.0


def readings() -> Iterable[Reading]:
    unsent = (
        OutboxMessage.objects.unsent()
        .order_by()
        .aggregate(
            n=Count("id"),
            age=ExpressionWrapper(Now() - Min("created_at"), output_field=DurationField()),
        )
    )
    yield Reading("outbox_unsent_messages", unsent["n"])
    yield Reading("outbox_oldest_unsent_age_seconds", _seconds(unsent["age"]) if unsent["n"] else 0)
    dead = (
        OutboxMessage.objects.filter(status=Status.DEAD)
        .order_by()
        .values_list("topic")
        .annotate(n=Count("id"))
    )
    for topic, n in dead:
        yield Reading("outbox_dead_messages", n, {"topic": topic})
