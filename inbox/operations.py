"""What operators do to inbox rows (replay, mark dead, purge, status), implemented once for
the admin actions, the management commands and the retention task."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.db import router, transaction
from django.db.models import Count, Exists, Min, OuterRef, Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from inbox_outbox.bulk import delete_in_batches
from inbox_outbox.conf import get_settings
from inbox_outbox.operations import OperationResult

from . import ordering
from .models import OPEN, InboxMessage, KeyProgress, Status
from .processing import drain_stream, retry_row
from .registry import registry

REPLAYABLE = (Status.FAILED, Status.DEAD)
KILLABLE = (Status.WAITING, Status.FAILED)
#: What a purge deletes unless told otherwise: never a message that may still be handled.
PURGEABLE = (Status.DONE, Status.REJECTED)
PURGE_BATCH = 1000


def replay(queryset: QuerySet[InboxMessage], *, dry_run: bool = False) -> OperationResult:
    """Handle failed or dead rows again now, through the same code path as a retry.

    Each row gets one more attempt now; the count continues, so a replayed dead message
    that fails again is dead again. Rows whose handler this process does not have are left
    due for a worker that has it.
    """
    total = queryset.count()
    applicable = queryset.filter(status__in=REPLAYABLE)
    if dry_run:
        done = applicable.count()
        return OperationResult(done, total - done)
    rows = list(applicable.values_list("id", "consumer"))
    InboxMessage.objects.filter(id__in=[r for r, _ in rows]).update(
        status=Status.FAILED, next_attempt_at=timezone.now()
    )
    failed_again = 0
    for row_id, consumer in rows:
        handler = registry.for_consumer(consumer)
        if handler is not None:
            retry_row(handler, row_id)
            if InboxMessage.objects.filter(id=row_id).exclude(status=Status.DONE).exists():
                failed_again += 1
    return OperationResult(len(rows), total - len(rows), failed_again)


def mark_dead(
    queryset: QuerySet[InboxMessage],
    *,
    reason: str = "marked dead by an operator",
    dry_run: bool = False,
) -> OperationResult:
    """Stop retrying (or waiting for) the rows; a dead head no longer holds back its key."""
    total = queryset.count()
    applicable = queryset.filter(status__in=KILLABLE)
    if dry_run:
        done = applicable.count()
        return OperationResult(done, total - done)
    rows = list(applicable)
    InboxMessage.objects.filter(id__in=[r.id for r in rows]).update(
        status=Status.DEAD, next_attempt_at=None, last_error=reason
    )
    for row in rows:
        stream = ordering.stream_of_row(row)
        if stream is None:
            continue
        # A dead head no longer holds back its stream; a dead row further back settles
        # nothing: the messages between the head and it may not have arrived yet.
        alias = router.db_for_write(InboxMessage)
        with transaction.atomic(using=alias):
            position = ordering.position_of_row(row)
            if ordering.is_next(alias, stream, position):
                ordering.settle(alias, stream, position)
        handler = registry.for_consumer(row.consumer)
        if handler is not None:
            drain_stream(handler, stream)
    return OperationResult(len(rows), total - len(rows))


def purge(
    queryset: QuerySet[InboxMessage],
    *,
    statuses: Iterable[str] = PURGEABLE,
    respect_dedup_window: bool = True,
    batch_size: int = PURGE_BATCH,
    dry_run: bool = False,
) -> OperationResult:
    """Delete the rows of ``queryset`` that are in ``statuses``, in batches.

    Processed rows younger than ``DEDUP_WINDOW_DAYS`` are kept unless
    ``respect_dedup_window`` is off: they are what turns a late redelivery into a no-op.
    Each batch is its own short transaction; memory stays flat.
    """
    matching = queryset.filter(status__in=tuple(statuses))
    if respect_dedup_window:
        window = dt.timedelta(days=get_settings().dedup_window_days)
        matching = matching.filter(
            ~Q(status=Status.DONE) | Q(received_at__lt=timezone.now() - window)
        )
    if dry_run:
        done = matching.count()
        return OperationResult(done, queryset.count() - done)
    return OperationResult(delete_in_batches(matching, batch_size), 0)


def purge_expired_retention() -> int:
    """The periodic retention purge: processed and rejected rows older than
    ``RETENTION_DAYS`` (and never younger than the dedup window), and stream progress idle
    for longer than both (see :func:`purge_idle_progress`)."""
    conf = get_settings()
    days = conf.retention_days
    if days is None:
        return 0
    cutoff = timezone.now() - dt.timedelta(days=days)
    purged = purge(InboxMessage.objects.filter(received_at__lt=cutoff)).done
    idle = dt.timedelta(days=max(days, conf.dedup_window_days))
    return purged + purge_idle_progress(idle=idle)


def purge_idle_progress(*, idle: dt.timedelta, batch_size: int = PURGE_BATCH) -> int:
    """Delete the progress rows of streams idle for longer than ``idle`` (on the database's
    clock) that hold no waiting or failed message. Without this they grow by one row per key
    forever. The stream's next message starts it afresh: a producer that purged its counter
    meanwhile sends 1 of a new epoch, which runs at once; keep producers' ``RETENTION_DAYS``
    at or below consumers' ``DEDUP_WINDOW_DAYS`` so that they do (``docs/operations.md``)."""
    busy = InboxMessage.objects.filter(
        consumer=OuterRef("consumer"),
        source=OuterRef("source"),
        topic=OuterRef("topic"),
        key=OuterRef("key"),
        status__in=OPEN,
    )
    idle_rows = KeyProgress.objects.filter(updated_at__lt=Now() - idle).exclude(Exists(busy))
    return delete_in_batches(idle_rows, batch_size)


def status() -> dict[str, Any]:
    """Counts per status and per consumer, the oldest open row's age, recent failures."""
    now = timezone.now()
    counts = dict(InboxMessage.objects.order_by().values_list("status").annotate(n=Count("id")))
    consumers: dict[str, dict[str, int]] = {}
    for consumer, state, n in (
        InboxMessage.objects.order_by().values_list("consumer", "status").annotate(n=Count("id"))
    ):
        consumers.setdefault(consumer, {})[state] = n
    topics: dict[str, dict[str, int]] = {}
    for topic, state, n in (
        InboxMessage.objects.order_by().values_list("topic", "status").annotate(n=Count("id"))
    ):
        topics.setdefault(topic, {})[state] = n
    oldest = InboxMessage.objects.filter(status__in=(Status.WAITING, Status.FAILED)).aggregate(
        oldest=Min("received_at")
    )["oldest"]
    recent = InboxMessage.objects.filter(
        status__in=(Status.FAILED, Status.DEAD, Status.REJECTED),
        received_at__gte=now - dt.timedelta(hours=1),
    )
    return {
        "counts": {s: counts.get(s, 0) for s in Status.values},
        "oldest_open_age_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
        "failures_last_hour": recent.count(),
        "consumers": consumers,
        "topics": topics,
    }
