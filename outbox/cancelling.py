"""``outbox.cancel()``: withdraw a message that has not gone out yet."""

from __future__ import annotations

import uuid

from django.db import router
from django.db.models import Q
from django.db.models.functions import Now

from . import operations
from .models import OutboxMessage, Status

#: What can still be withdrawn: a message waiting for its due time, or due but not yet
#: claimed. A failed one has been on the wire (its broker confirm is what failed), so
#: cancelling it could not promise that consumers never see it.
CANCELLABLE = (Status.SCHEDULED, Status.PENDING)

#: ``last_error`` of a cancelled row, for the admin.
REASON = "cancelled by its producer"


def cancel(message_id: uuid.UUID | str, *, using: str | None = None) -> bool:
    """Cancel the message ``message_id`` unless it has gone out: return whether it did.

    True: it was scheduled, or pending and not claimed by a relay, and is now ``cancelled``;
    the relay will never send it. A keyed one's position is announced void in the same
    transaction, so its key's later messages go on and consumers wait for no gap. False:
    it is sent, being sent (a relay holds its lease), failed, already ended, a void
    announcement, or unknown.

    Runs through ``using``'s connection (by default the router's choice for the outbox),
    inside the caller's transaction when one is open: cancelled if and only if that commits.
    """
    try:
        mid = message_id if isinstance(message_id, uuid.UUID) else uuid.UUID(str(message_id))
    except ValueError:
        return False
    alias = using or router.db_for_write(OutboxMessage)
    rows = (
        OutboxMessage.objects.using(alias)
        .filter(id=mid, status__in=CANCELLABLE, voids__isnull=True)
        .exclude(Q(lease_until__gt=Now()))
    )
    return operations.withdraw(rows, status=Status.CANCELLED, reason=REASON, using=alias) > 0
