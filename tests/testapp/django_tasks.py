"""Django Tasks that the tests enqueue through the outbox: ``django.tasks`` on Django 6, the
``django-tasks`` backport before (``inbox_outbox_tasks.compat`` picks)."""

import time

from inbox_outbox_tasks.compat import task, task_finished, task_started

from .models import Account, Effect


@task
def credit(account: str, amount: int) -> int:
    """Adds to a balance: run twice for one result id, it must still add once."""
    row, _ = Account.objects.get_or_create(name=account)
    row.balance += amount
    row.save(update_fields=["balance"])
    return row.balance


@task
def record(label: str) -> dict:
    Effect.objects.create(consumer="django-task", message_id=label)
    return {"label": label}


@task
def always_fails(label: str) -> None:
    Effect.objects.create(consumer="django-task-failed", message_id=label)  # rolled back
    raise ValueError(f"no luck for {label}")


@task
def returns_an_object() -> object:
    return object()


@task(queue_name="reports")
def report(label: str) -> str:
    Effect.objects.create(consumer="django-task-report", message_id=label)
    return label


@task
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _recorded(signal_name: str):  # type: ignore[no-untyped-def]
    def receiver(sender, task_result, **kwargs):  # type: ignore[no-untyped-def]
        if task_result.task.name == "record":
            Effect.objects.create(
                consumer=f"signal:{signal_name}:{task_result.status}", message_id=task_result.id
            )

    return receiver


# In the worker: both run inside the inbox transaction of the task, so they commit with it.
_on_started, _on_finished = _recorded("started"), _recorded("finished")
task_started.connect(_on_started)
task_finished.connect(_on_finished)
