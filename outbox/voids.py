"""Void announcements: telling consumers that a keyed message's position will never arrive.

A keyed message that ends ``dead``, ``expired`` or ``cancelled`` without having been confirmed leaves a gap
in its stream that every consumer would otherwise wait out (``ORDER_WAIT_SECONDS``). In the
same transaction as that status change, an announcement row takes its place in the outbox: it
carries the same (topic, key, epoch, sequence) and ``voids`` = the message's id, and the relay
sends it like any other row (confirmed, retried, leased). A consumer settles that position
without running a handler, and its successors run at once.

An announcement is never itself announced: one that ends dead leaves the gap to the timeout.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from uuid6 import uuid7

from .models import OutboxMessage, Status


def announce(ids: Iterable[uuid.UUID], *, using: str) -> int:
    """Queue a void announcement for each keyed message among ``ids`` (just made dead,
    expired or cancelled, unsent); return how many. Call it inside the transaction that
    changed them."""
    gone = (
        OutboxMessage.objects.using(using)
        .filter(
            id__in=list(ids),
            key__isnull=False,
            sequence__isnull=False,
            voids__isnull=True,
            sent_at__isnull=True,
            status__in=(Status.DEAD, Status.EXPIRED, Status.CANCELLED),
        )
        .values("id", "topic", "key", "sequence", "epoch")
    )
    announcements = [
        OutboxMessage(
            id=uuid7(),
            topic=row["topic"],
            key=row["key"],
            sequence=row["sequence"],
            epoch=row["epoch"],
            voids=row["id"],
            dedup_key=f"void:{row['id']}",  # one announcement per message, however often it dies
            payload={},
        )
        for row in gone
    ]
    made = OutboxMessage.objects.using(using).bulk_create(announcements, ignore_conflicts=True)
    return len(made)
