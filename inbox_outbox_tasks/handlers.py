"""The inbox handlers that run tasks: one per queue of each ``OutboxTaskBackend`` in
``TASKS`` (discovered by the inbox app like any ``handlers.py``)."""

from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from inbox.registry import handler as register

from .backend import OutboxTaskBackend, handler_name, topic_for
from .running import run_task


def _queues() -> set[str]:
    queues: set[str] = set()
    for config in getattr(settings, "TASKS", {}).values():
        backend = config.get("BACKEND", "")
        try:
            cls = import_string(backend)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, OutboxTaskBackend):
            queues |= set(config.get("QUEUES", ["default"]))
    return queues


for _queue in sorted(_queues()):
    register(topic_for(_queue), name=handler_name(_queue))(run_task)
