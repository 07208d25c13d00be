"""Celery entry points of the outbox; schedule ``outbox.relay`` with beat."""

from __future__ import annotations

from celery import shared_task

#: Leave the worker after this many batches so one task never hogs it; beat or a nudge follows.
MAX_BATCHES_PER_TASK = 200


@shared_task(name="outbox.relay", ignore_result=True)
def relay() -> int:
    """Publish due outbox rows; safe to run concurrently with other relays."""
    from .relay import Relay

    relay = Relay()
    try:
        return relay.drain(max_batches=MAX_BATCHES_PER_TASK, linger=True)
    finally:
        relay.close()


@shared_task(name="outbox.purge", ignore_result=True)
def purge() -> int:
    """Apply ``RETENTION_DAYS`` to sent and expired rows (a no-op while it is None)."""
    from .operations import purge_expired_retention

    return purge_expired_retention()
