"""django-inbox-outbox: a backend for Django's Tasks framework (``django.tasks``, Django 6;
the ``django-tasks`` backport before it) that enqueues through the outbox.

``enqueue()`` writes an outbox row and the task's result row through the caller's database
connection, inside its transaction: rolled back, the task never runs; committed, the relay sends
it and the inbox worker runs it inside the transaction that records it, keyed by the task result
id, so a redelivered task is a no-op. Install both apps and this one, then::

    TASKS = {"default": {"BACKEND": "inbox_outbox_tasks.OutboxTaskBackend"}}
"""

from typing import TYPE_CHECKING, Any

__all__ = ["OutboxTaskBackend"]

if TYPE_CHECKING:
    from .backend import OutboxTaskBackend


def __getattr__(name: str) -> Any:
    # The backend touches models, which exist only once Django's app registry is ready.
    if name == "OutboxTaskBackend":
        from .backend import OutboxTaskBackend

        return OutboxTaskBackend
    raise AttributeError(f"module 'inbox_outbox_tasks' has no attribute {name!r}")
