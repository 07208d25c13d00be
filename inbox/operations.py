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
from .processing import DRAIN_STEP, drain_stream, retry_row
from .registry import registry

REPLAYABLE = (Status.FAILED, Status.DEAD)
KILLABLE = (Status.WAITING, Status.FAILED)
#: What a purge deletes unless told otherwise: never a message that may still be handled.
PURGEABLE = (Status.DONE, Status.REJECTED)
#: The rows the dedup window protects from a purge: a redelivery of a processed or dead
#: message finds its row and does nothing; without the row it would run the handler again.
#: A rejected row protects nothing (its redelivery is rejected again).
DEDUP_PROTECTED = (Status.DONE, Status.DEAD)
PURGE_BATCH = 1000
#: Handlers an operator action runs in its own request or command, at most; the rest are
#: made due and run by the retry sweep (``INBOX_SWEEP_INTERVAL``), like any retry.
RUN_NOW = DRAIN_STEP


def replay(queryset: QuerySet[InboxMessage], *, dry_run: bool = False) -> OperationResult:
    """Handle failed or dead rows again, through the same code path as a retry.

    Every selected row is made due now; this process runs at most :data:`RUN_NOW` handlers
    (replayed rows and the waiting successors they release) and leaves the rest, counted as
    ``deferred``, to the retry sweep. Each row gets one more attempt; the count continues,
    so a replayed dead message that fails again is dead again. Rows whose handler this
    process does not have are left due for a worker that has it.
    """
    total = queryset.count()
    applicable = queryset.filter(status__in=REPLAYABLE)
    if dry_run:
        done = applicable.count()
        return OperationResult(done, total - done)
    alias = router.db_for_write(InboxMessage)
    rows = list(applicable.using(alias).order_by("id").values_list("id", "consumer"))
    InboxMessage.objects.using(alias).filter(id__in=[r for r, _ in rows]).update(
        status=Status.FAILED, next_attempt_at=Now()
    )
    budget, ran = RUN_NOW, []
    for row_id, consumer in rows:
        handler = registry.for_consumer(consumer)
        if handler is None or budget <= 0:
            continue
        settled = retry_row(handler, row_id, using=alias, limit=budget)
        budget -= max(settled, 1)
        if settled:
            ran.append(row_id)
    failed_again = (
        InboxMessage.objects.using(alias).filter(id__in=ran).exclude(status=Status.DONE).count()
    )
    return OperationResult(len(rows), total - len(rows), failed_again, len(rows) - len(ran))


def mark_dead(
    queryset: QuerySet[InboxMessage],
    *,
    reason: str = "marked dead by an operator",
    dry_run: bool = False,
) -> OperationResult:
    """Stop retrying (or waiting for) the rows; a dead head no longer holds back its stream.

    The streams it releases are handed on here for at most :data:`RUN_NOW` handlers in all;
    the rest are handed on by the retry sweep.
    """
    total = queryset.count()
    applicable = queryset.filter(status__in=KILLABLE)
    if dry_run:
        done = applicable.count()
        return OperationResult(done, total - done)
    alias = router.db_for_write(InboxMessage)
    with transaction.atomic(using=alias):
        rows = list(applicable.using(alias).select_for_update(skip_locked=True))
        InboxMessage.objects.using(alias).filter(id__in=[r.id for r in rows]).update(
            status=Status.DEAD, next_attempt_at=None, last_error=reason
        )
    released: dict[ordering.Stream, str] = {}
    for row in rows:
        stream = ordering.stream_of_row(row)
        if stream is None:
            continue
        # A dead head no longer holds back its stream; a dead row further back settles
        # nothing: the messages between the head and it may not have arrived yet.
        with transaction.atomic(using=alias):
            position = ordering.position_of_row(row)
            if ordering.is_next(alias, stream, position):
                ordering.settle(alias, stream, position)
                released[stream] = row.consumer
    budget = RUN_NOW
    for stream, consumer in sorted(released.items()):
        handler = registry.for_consumer(consumer)
        if handler is not None and budget > 0:
            budget -= drain_stream(handler, stream, using=alias, limit=budget)
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

    Rows in :data:`DEDUP_PROTECTED` (processed, dead) received within ``DEDUP_WINDOW_DAYS``
    (on the database's clock) are kept unless ``respect_dedup_window`` is off: they are what
    turns a late redelivery into a no-op. Each batch is its own short transaction; memory
    stays flat.
    """
    matching = queryset.filter(status__in=tuple(statuses))
    if respect_dedup_window:
        window = dt.timedelta(days=get_settings().dedup_window_days)
        matching = matching.filter(
            ~Q(status__in=DEDUP_PROTECTED) | Q(received_at__lt=Now() - window)
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
    cutoff = Now() - dt.timedelta(days=days)
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
