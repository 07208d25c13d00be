"""What operators do to outbox rows (replay, mark dead, purge, status), implemented once for
the admin actions, the management commands and the retention task."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Count, Exists, Min, OuterRef, Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from inbox_outbox.bulk import delete_in_batches
from inbox_outbox.conf import get_settings
from inbox_outbox.operations import OperationResult

from . import scheduling, sql, voids
from .exceptions import ReplayRefused
from .models import OUTSTANDING, OutboxMessage, Sequence, Status

#: The statuses each operation applies to; rows in other statuses are skipped and counted.
#: A cancelled message is never replayed: its producer withdrew it (and a keyed one's
#: position was announced void, so consumers would keep it stale); publish it again instead.
REPLAYABLE = (Status.SENT, Status.FAILED, Status.DEAD, Status.EXPIRED)
KILLABLE = (Status.SCHEDULED, Status.PENDING, Status.FAILED)
#: What a purge deletes unless told otherwise: never a message that may still be sent.
PURGEABLE = (Status.SENT, Status.EXPIRED, Status.CANCELLED)
PURGE_BATCH = 1000


def replay(
    queryset: QuerySet[OutboxMessage],
    *,
    past_dedup_window: bool = False,
    clear_expiry: bool = False,
    dry_run: bool = False,
) -> OperationResult:
    """Publish the rows again with the same id: pending and due now.

    The attempt count continues, so a replayed dead message that fails again is dead again.
    Rows a relay holds right now (a live lease: they may be on the wire) are skipped. Two
    replays are refused with :class:`ReplayRefused` unless asked for by name, because they
    do more than publish again:

    - ``past_dedup_window``: messages sent longer ago than ``DEDUP_WINDOW_DAYS``, whose
      inbox rows consumers may have purged: they would run every consumer's handler again;
    - ``clear_expiry``: messages whose expiry has passed; they are sent without one (else the
      relay would expire them again at once).
    """
    total = queryset.count()
    applicable = queryset.filter(status__in=REPLAYABLE).exclude(_leased())
    _refuse_unless_asked(applicable, past_dedup_window=past_dedup_window, clear_expiry=clear_expiry)
    if dry_run:
        done = applicable.count()
        return OperationResult(done, total - done)
    alias = router.db_for_write(OutboxMessage)
    with transaction.atomic(using=alias):
        ids = list(applicable.using(alias).select_for_update().values_list("id", flat=True))
        rows = OutboxMessage.objects.using(alias).filter(id__in=ids)
        if clear_expiry:
            rows.filter(expires_at__lte=Now()).update(expires_at=None)
        done = rows.update(
            status=Status.PENDING,
            available_at=Now(),
            lease_owner="",
            lease_until=None,
            last_error="",
        )
    return OperationResult(done, total - done)


def _leased() -> Q:
    """Rows a relay holds right now, on the database's clock."""
    return Q(lease_until__gt=Now())


def _refuse_unless_asked(
    rows: QuerySet[OutboxMessage], *, past_dedup_window: bool, clear_expiry: bool
) -> None:
    days = get_settings().dedup_window_days
    if not past_dedup_window:
        old = rows.filter(status=Status.SENT, sent_at__lt=Now() - dt.timedelta(days=days)).count()
        if old:
            raise ReplayRefused(
                f"Nothing replayed: {old} of the selected messages were sent more than "
                f"DEDUP_WINDOW_DAYS ({days:g}) days ago. Consumers may have purged their "
                "record of them, so every consumer would handle them again. Narrow the "
                "selection, or replay them anyway with --past-dedup-window (command) / "
                "past_dedup_window=True."
            )
    if not clear_expiry:
        expired = rows.filter(expires_at__lte=Now()).count()
        if expired:
            raise ReplayRefused(
                f"Nothing replayed: {expired} of the selected messages have expired (their "
                "ttl passed); the relay would expire them again at once. Replay them with "
                "--clear-expiry (command) / clear_expiry=True to send them without an expiry."
            )


def mark_dead(
    queryset: QuerySet[OutboxMessage],
    *,
    reason: str = "marked dead by an operator",
    dry_run: bool = False,
) -> OperationResult:
    """Stop trying to publish the rows; they stay visible as dead, and the keyed ones among
    them are announced void so that consumers do not wait for them (``outbox.voids``).
    Rows a relay holds right now (a live lease: they may be on the wire) are skipped."""
    total = queryset.count()
    applicable = queryset.filter(status__in=KILLABLE).exclude(_leased())
    if dry_run:
        return OperationResult(applicable.count(), total - applicable.count())
    alias = router.db_for_write(OutboxMessage)
    done = withdraw(applicable, status=Status.DEAD, reason=reason, using=alias)
    return OperationResult(done, total - done)


def withdraw(rows: QuerySet[OutboxMessage], *, status: str, reason: str, using: str) -> int:
    """End ``rows`` (unsent, not leased: the caller's selection) as ``status`` without a
    send, and announce the keyed ones void in the same transaction: the one path for an
    operator's mark-dead and a producer's ``outbox.cancel()``. Returns how many.

    Locking re-checks status and lease on the latest row version: a row a relay promoted or
    leased meanwhile keeps going."""
    with transaction.atomic(using=using):
        ids = list(rows.using(using).select_for_update().values_list("id", flat=True))
        done = (
            OutboxMessage.objects.using(using)
            .filter(id__in=ids)
            .update(status=status, lease_owner="", lease_until=None, last_error=reason)
        )
        voids.announce(ids, using=using)
    return done


def purge(
    queryset: QuerySet[OutboxMessage],
    *,
    statuses: Iterable[str] = PURGEABLE,
    batch_size: int = PURGE_BATCH,
    dry_run: bool = False,
) -> OperationResult:
    """Delete the rows of ``queryset`` that are in ``statuses``.

    Deletes by primary key in batches, each in its own short transaction: no long lock,
    and memory stays flat however many rows match.
    """
    matching = queryset.filter(status__in=tuple(statuses))
    if dry_run:
        done = matching.count()
        return OperationResult(done, queryset.count() - done)
    return OperationResult(delete_in_batches(matching, batch_size), 0)


def purge_expired_retention() -> int:
    """The periodic retention purge: sent/expired rows older than ``RETENTION_DAYS``, and
    the (topic, key) counters idle as long (see :func:`purge_idle_sequences`)."""
    days = get_settings().retention_days
    if days is None:
        return 0
    old = OutboxMessage.objects.filter(created_at__lt=Now() - dt.timedelta(days=days))
    return purge(old).done + purge_idle_sequences(idle_seconds=days * 86400)


def purge_idle_sequences(
    *, idle_seconds: float, using: str | None = None, batch_size: int = PURGE_BATCH
) -> int:
    """Delete the per-key counters not used for ``idle_seconds`` (on the database's clock)
    whose key has nothing unsent. Without this they grow by one row per key forever; a purged
    key starts again at sequence 1 in a new epoch, which consumers take for a restart
    (``docs/wire-format.md``).

    Each step first locks idle counters (skipping any a publisher holds), then deletes those
    whose key has nothing unsent in a second statement, whose snapshot sees every message
    that bumped them before the lock: a counter is never purged under a message that is
    still to be sent, which the restarted epoch could overtake.
    """
    alias = using or router.db_for_write(Sequence)
    unsent = OutboxMessage.objects.using(alias).filter(
        topic=OuterRef("topic"), key=OuterRef("key"), status__in=OUTSTANDING
    )
    purged = 0
    while True:
        with transaction.atomic(using=alias):
            idle = list(
                Sequence.objects.using(alias)
                .filter(updated_at__lt=Now() - dt.timedelta(seconds=idle_seconds))
                .order_by()
                .select_for_update(skip_locked=True)
                .values_list("id", flat=True)[:batch_size]
            )
            if not idle:
                return purged
            purged += (
                Sequence.objects.using(alias)
                .filter(id__in=idle)
                .exclude(Exists(unsent))
                .delete()[0]
            )
        if len(idle) < batch_size:
            return purged


def new_epoch(*, using: str | None = None) -> int:
    """Start every per-key counter again at 1 in a new epoch: after restoring the outbox's
    database from a backup, so consumers do not take the numbers handed out again for stale
    ones. Returns how many counters moved."""
    alias = using or router.db_for_write(Sequence)
    connection = connections[alias]
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.execute(sql.new_epoch(connection.vendor))
        return max(int(cursor.rowcount), 0)


def status() -> dict[str, Any]:
    """Counts per status and per topic, the oldest unsent message's age, recent failures;
    scheduled messages already due (the relay promotes them as it claims: a number that
    stays up means no relay is running) and the seconds until the next one falls due, on
    the database's clock."""
    now = timezone.now()
    alias = router.db_for_read(OutboxMessage)
    counts = dict(OutboxMessage.objects.order_by().values_list("status").annotate(n=Count("id")))
    topics: dict[str, dict[str, int]] = {}
    for topic, state, n in (
        OutboxMessage.objects.order_by().values_list("topic", "status").annotate(n=Count("id"))
    ):
        topics.setdefault(topic, {})[state] = n
    oldest = OutboxMessage.objects.unsent().aggregate(oldest=Min("created_at"))["oldest"]
    # A failure sets the next attempt in the future, and a death happens at an attempt.
    recent = OutboxMessage.objects.filter(
        status__in=(Status.FAILED, Status.DEAD), available_at__gte=now - dt.timedelta(hours=1)
    )
    return {
        "counts": {s: counts.get(s, 0) for s in Status.values},
        "oldest_unsent_age_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
        "failures_last_hour": recent.count(),
        "scheduled_due": OutboxMessage.objects.scheduled().filter(available_at__lte=Now()).count(),
        "next_scheduled_in_seconds": _rounded(scheduling.seconds_to_next_due(using=alias)),
        "topics": topics,
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)
