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

from inbox_outbox import endpoint, health
from inbox_outbox.conf import get_settings

from . import topology
from .consumer import Receiver, service_queue
from .lanes import Lanes, Sweeper
from .registry import registry

if TYPE_CHECKING:
    from celery.worker import WorkController
    from celery.worker.consumer import Consumer as WorkerConsumer
    from kombu.transport.base import StdChannel

logger = logging.getLogger(__name__)

#: The readiness condition of the worker's broker connection (:func:`inbox_outbox.health.condition`).
BROKER_CONDITION = "inbox-broker"

#: Without an event loop, batches are handled on the consuming thread, which then sends no
#: heartbeats: hold a batch the database cannot take no longer than this (Celery's
#: ``broker_heartbeat`` is 120 s, and the broker closes the connection after two missed).
HOLD_WITHOUT_LOOP = 30.0


class InboxConsumerStep(bootsteps.ConsumerStep):
    """Consumes the service's queue on the worker's own broker connection.

    On the worker's event loop (the usual case) handlers run on ``INBOX_CONCURRENCY`` lanes
    (:mod:`inbox.lanes`) and the retry sweep on a thread of its own, so the loop keeps the
    connection's heartbeats going however long a handler takes. Without an event loop the
    receiver handles batches on the consuming thread, flushed by the worker's timer.
    """

    receiver: Receiver | None = None
    lanes: Lanes | None = None
    sweeper: Sweeper | None = None

    def start(self, c: WorkerConsumer) -> None:
        conf = get_settings()
        if registry.topics() and c.connection is not None:
            try:  # before consuming: the dead-letter queue exists before anything can go there
                topology.declare(c.connection)
            except topology.TopologyMismatch as exc:
                logger.critical("inbox: %s", exc)
                raise
        hub = getattr(c, "hub", None)
        if hub is not None:
            self.lanes = Lanes(hub=hub, count=conf.inbox_concurrency)
        else:
            self.receiver = Receiver(
                schedule=lambda delay, fn: c.timer.call_after(delay, fn),
                hold_seconds=min(conf.inbox_hold_seconds, HOLD_WITHOUT_LOOP),
            )
        super().start(c)
        # Consuming on a connection Celery just (re)opened: ready as far as the broker goes.
        health.condition(BROKER_CONDITION, ok=True)
        if conf.inbox_sweep_interval and registry.topics() and self.sweeper is None:
            # Every consuming worker retries due failures and unblocks keys itself, so
            # recovery after a crash does not depend on celery beat being deployed.
            self.sweeper = Sweeper(conf.inbox_sweep_interval)
        endpoint.serve()  # TELEMETRY_PORT: /metrics, /live, /ready

    def get_consumers(self, channel: StdChannel) -> list[kombu.Consumer]:
        on_message = self.lanes or self.receiver
        if not registry.topics() or on_message is None:
            return []
        return [
            kombu.Consumer(
                channel,
                queues=[service_queue()],
                on_message=on_message,
                prefetch_count=get_settings().prefetch_count,
            )
        ]

    def stop(self, c: WorkerConsumer) -> None:
        # Celery stops its consumer steps when the broker connection is lost (then starts them
        # again once it reconnects) and when the worker shuts down: not ready either way.
        health.condition(
            BROKER_CONDITION, ok=False, error="broker: not consuming (connection lost or stopping)"
        )
        if self.lanes is not None:
            self.lanes.stop()
            self.lanes = None
        if self.receiver is not None:
            self.receiver.flush()
        super().stop(c)

    def shutdown(self, c: WorkerConsumer) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None
        super().shutdown(c)


def install(
    sender: str | None = None, instance: WorkController | None = None, **kwargs: Any
) -> None:
    """``celeryd_init`` receiver: add the inbox consumer to the starting worker."""
    if not get_settings().consume_in_worker or instance is None:
        return
    steps = instance.app.steps["consumer"]
    if InboxConsumerStep not in steps:
        steps.add(InboxConsumerStep)
