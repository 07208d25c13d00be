"""The Celery worker side: a consumer bootstep that feeds the service queue to the inbox.

It is added to every worker of a Django project that installs the inbox app, so
``celery -A project worker`` consumes with no further wiring. It runs in the
worker's main process, on the worker's own broker connection, and acknowledges
each delivery only after the inbox transaction that holds it commits.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import kombu
from celery import bootsteps

from inbox_outbox.conf import get_settings

from .consumer import Receiver, service_queue
from .processing import retry_due
from .registry import registry

if TYPE_CHECKING:
    from celery.worker import WorkController
    from celery.worker.consumer import Consumer as WorkerConsumer
    from kombu.transport.base import StdChannel

logger = logging.getLogger(__name__)


class InboxConsumerStep(bootsteps.ConsumerStep):
    """Consumes the service's queue in the worker's main process."""

    receiver: Receiver | None = None

    def start(self, c: WorkerConsumer) -> None:
        # The worker's timer runs in its event loop, so batches flush on the consuming thread.
        self.receiver = Receiver(schedule=lambda delay, fn: c.timer.call_after(delay, fn))
        super().start(c)
        interval = get_settings().inbox_sweep_interval
        if interval and registry.topics():
            # Every consuming worker retries due failures and unblocks keys itself, so
            # recovery after a crash does not depend on celery beat being deployed.
            c.timer.call_repeatedly(interval, _sweep)

    def get_consumers(self, channel: StdChannel) -> list[kombu.Consumer]:
        if not registry.topics() or self.receiver is None:
            return []
        return [
            kombu.Consumer(
                channel,
                queues=[service_queue()],
                on_message=self.receiver,
                prefetch_count=get_settings().prefetch_count,
            )
        ]

    def stop(self, c: WorkerConsumer) -> None:
        if self.receiver is not None:
            self.receiver.flush()
        super().stop(c)


def _sweep() -> None:
    try:
        retry_due()
    except Exception:  # a database hiccup: the next sweep tries again
        logger.warning("inbox: retry sweep failed", exc_info=True)


def install(
    sender: str | None = None, instance: WorkController | None = None, **kwargs: Any
) -> None:
    """``celeryd_init`` receiver: add the inbox consumer to the starting worker."""
    if not get_settings().consume_in_worker or instance is None:
        return
    steps = instance.app.steps["consumer"]
    if InboxConsumerStep not in steps:
        steps.add(InboxConsumerStep)
