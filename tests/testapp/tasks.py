"""Celery tasks the tests send to real workers."""

import os

from celery import shared_task

from inbox import exactly_once
from outbox.celery_tasks import OutboxTask

from .models import Account, Effect


@shared_task(name="testapp.credit", acks_late=True)
@exactly_once
def credit(account: str, amount: int) -> int:
    """Adds to a balance: run twice for one task id, it must still add once."""
    return _add(account, amount)


@shared_task(name="testapp.credit_once_per_reference", acks_late=True)
@exactly_once(key=lambda account, amount, reference: reference)
def credit_once_per_reference(account: str, amount: int, reference: str) -> int:
    return _add(account, amount)


@shared_task(name="testapp.credit_on_commit", base=OutboxTask, acks_late=True)
@exactly_once
def credit_on_commit(account: str, amount: int) -> int:
    """Sent through the outbox by ``.delay()``: only if the sender's transaction commits."""
    return _add(account, amount)


@shared_task(name="testapp.credit_or_die", acks_late=True)
@exactly_once
def credit_or_die(account: str, amount: int, marker: str) -> int:
    """The first run kills its worker inside the task (the transaction never commits)."""
    balance = _add(account, amount)
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return balance


def _add(account: str, amount: int) -> int:
    row, _ = Account.objects.get_or_create(name=account)
    row.balance += amount
    row.save(update_fields=["balance"])
    return row.balance


@shared_task(name="testapp.order_effect", base=OutboxTask, acks_late=True)
@exactly_once
def order_effect(order_id: int) -> None:
    """Sent through the outbox in the order's transaction; one effect per order, ever."""
    Effect.objects.create(consumer="task", message_id=str(order_id))
