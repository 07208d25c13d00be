"""The task benchmark's tasks: one business insert each, through the outbox or plain."""

from celery import shared_task

from inbox import exactly_once
from outbox import OutboxTask
from tests.testapp.models import Effect


@shared_task(name="bench.task_outbox", base=OutboxTask, acks_late=True)
@exactly_once
def task_outbox(n: int) -> None:
    Effect.objects.create(consumer="outbox", message_id=str(n))


@shared_task(name="bench.task_plain", acks_late=True)
def task_plain(n: int) -> None:
    Effect.objects.create(consumer="plain", message_id=str(n))
