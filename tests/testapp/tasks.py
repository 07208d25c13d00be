"""Celery tasks the tests send to real workers."""

from celery import shared_task

from inbox import exactly_once

from .models import Account


@shared_task(name="testapp.credit", acks_late=True)
@exactly_once
def credit(account: str, amount: int) -> int:
    """Adds to a balance: run twice for one task id, it must still add once."""
    row, _ = Account.objects.get_or_create(name=account)
    row.balance += amount
    row.save(update_fields=["balance"])
    return row.balance


@shared_task(name="testapp.credit_once_per_reference", acks_late=True)
@exactly_once(key=lambda account, amount, reference: reference)
def credit_once_per_reference(account: str, amount: int, reference: str) -> int:
    row, _ = Account.objects.get_or_create(name=account)
    row.balance += amount
    row.save(update_fields=["balance"])
    return row.balance
