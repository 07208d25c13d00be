"""Celery tasks of the inbox; beat runs ``inbox.retry_due`` every few seconds."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="inbox.retry_due", ignore_result=True)
def retry_due() -> int:
    """Retry failed messages whose backoff has passed; unblock keys that waited too long."""
    from .processing import retry_due as run

    return run()
