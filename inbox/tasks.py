"""Celery tasks of the inbox; beat runs ``inbox.retry_due`` every few seconds."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="inbox.retry_due", ignore_result=True)
def retry_due() -> int:
    """Retry failed messages whose backoff has passed; unblock keys that waited too long."""
    from .processing import retry_due as run

    return run()


@shared_task(name="inbox.purge", ignore_result=True)
def purge() -> int:
    """Apply ``RETENTION_DAYS`` to processed and rejected rows, never inside the dedup window."""
    from .operations import purge_expired_retention

    return purge_expired_retention()
