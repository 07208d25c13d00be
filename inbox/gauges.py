"""The inbox's gauges for :mod:`inbox_outbox.metrics`: waiting streams and the oldest gap,
retries due, dead rows.

Each is one query on an index of the inbox: waiting rows through the partial index on
waiting streams and (status, received_at), due retries through the partial index on failed
rows. Ages and due times are on the database's clock. ``bench/gauges.py`` measures them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.db.models import Count, DurationField, ExpressionWrapper, Min
from django.db.models.functions import Now

from inbox_outbox.metrics import Reading

from .models import InboxMessage, Status


def _seconds(age: object) -> float:
    return age.total_seconds() if isinstance(age, dt.timedelta) else 0.0


def readings() -> Iterable[Reading]:
    rows = InboxMessage.objects.order_by()
    waiting = rows.filter(status=Status.WAITING)
    keys = waiting.values("consumer", "source", "topic", "key").distinct().count()
    yield Reading("inbox_waiting_keys", keys)
    age = waiting.aggregate(
        age=ExpressionWrapper(Now() - Min("received_at"), output_field=DurationField())
    )["age"]
    yield Reading("inbox_oldest_waiting_age_seconds", _seconds(age) if keys else 0)
    due = rows.filter(status=Status.FAILED, next_attempt_at__lte=Now()).count()
    yield Reading("inbox_failed_due_messages", due)
    for topic, n in rows.filter(status=Status.DEAD).values_list("topic").annotate(n=Count("id")):
        yield Reading("inbox_dead_messages", n, {"topic": topic})
