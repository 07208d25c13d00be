"""The Celery worker side: a consumer bootstep that feeds the service queue to the inbox.

It is added to every worker of a Django project that installs the inbox app, so
``celery -A project worker`` consumes with no further wiring. It runs in the
worker's main process, on the worker's own broker connection, and acknowledges
each delivery only after the inbox transaction commits.
"""

from __future__ import annotations

from typing import Any

import kombu
from celery import bootsteps

from outbox.conf import get_settings

from .consumer import on_message, service_queue
from .registry import registry


class InboxConsumerStep(bootsteps.ConsumerStep):
    """Consumes the service's queue in the worker's main process."""

    def get_consumers(self, channel: Any) -> list[kombu.Consumer]:
        if not registry.topics():
            return []
        return [
            kombu.Consumer(
                channel,
                queues=[service_queue()],
                on_message=on_message,
                prefetch_count=get_settings().prefetch_count,
            )
        ]


def install(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    """``celeryd_init`` receiver: add the inbox consumer to the starting worker."""
    if not get_settings().consume_in_worker or instance is None:
        return
    steps = instance.app.steps["consumer"]
    if InboxConsumerStep not in steps:
        steps.add(InboxConsumerStep)
