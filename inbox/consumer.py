"""Consuming the service's queue: declare it, receive, process, acknowledge after commit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kombu
from django.db import DatabaseError, InterfaceError, connections

from inbox_outbox.broker import connect, events_exchange
from inbox_outbox.conf import get_settings

from .processing import process_batch, process_delivery
from .registry import registry

logger = logging.getLogger(__name__)

#: How long to pause before requeueing deliveries the database could not take.
DATABASE_DOWN_PAUSE = 1.0


def service_queue() -> kombu.Queue:
    """The service's durable queue, bound to every topic its handlers declare.

    All workers of one service share it (a consumer group); another service has its own.
    """
    conf = get_settings()
    exchange = events_exchange()
    topics = sorted(registry.topics())
    return kombu.Queue(
        conf.queue_name,
        exchange=exchange,
        durable=True,
        auto_delete=False,
        bindings=[kombu.binding(exchange, routing_key=t) for t in topics],
    )


class Receiver:
    """Buffers deliveries and handles them in batches; acknowledges only after commit.

    A batch is handled when it reaches ``INBOX_BATCH_SIZE`` deliveries or when
    ``flush()`` is called, which the caller schedules ``INBOX_BATCH_DELAY`` after the
    first buffered delivery. The database connection is kept across batches (a
    reconnect per message would cost more than the message); a failed connection is
    closed and reopened by the next batch.
    """

    def __init__(
        self, *, schedule: Callable[[float, Callable[[], None]], Any] | None = None
    ) -> None:
        conf = get_settings()
        self.batch_size = max(1, conf.inbox_batch_size)
        self.delay = conf.inbox_batch_delay
        self.schedule = schedule
        self.pending: list[kombu.Message] = []
        self.handled = 0
        self._lock = threading.RLock()

    def __call__(self, message: kombu.Message) -> None:
        with self._lock:
            self.pending.append(message)
            count = len(self.pending)
        if count >= self.batch_size:
            self.flush()
        elif count == 1 and self.schedule is not None:
            self.schedule(self.delay, self.flush)

    def flush(self) -> None:
        with self._lock:
            batch, self.pending = self.pending, []
            if batch:
                self.settle(batch, durable=self.handle(batch))

    def handle(self, batch: list[kombu.Message]) -> bool:
        """Make ``batch`` durable in the inbox; ``False`` if the database could not take it.

        Thread-safe apart from the broker: it touches no channel, so :class:`~inbox.lanes.Lanes`
        runs it on handler threads and settles on the consuming thread.
        """
        deliveries = [(m.body, dict(m.properties), m.headers) for m in batch]
        try:
            if len(batch) == 1:
                process_delivery(*deliveries[0])
            else:
                process_batch(deliveries)
        except (DatabaseError, InterfaceError) as exc:
            # Nothing is durable: the deliveries go back to the broker, and we slow down.
            logger.warning(
                "inbox: database unavailable (%s); requeueing %d message(s)", exc, len(batch)
            )
            for conn in connections.all(initialized_only=True):
                conn.close_if_unusable_or_obsolete()
            time.sleep(DATABASE_DOWN_PAUSE)
            return False
        return True

    def settle(self, batch: list[kombu.Message], *, durable: bool) -> None:
        """Acknowledge ``batch`` once durable, else hand it back; on the consuming thread."""
        for message in batch:
            if durable:
                message.ack()
            else:
                message.requeue()
        if durable:
            self.handled += len(batch)


class QueueConsumer:
    """A plain kombu consumer of the service queue, outside Celery (the demo uses it)."""

    def __init__(
        self, url: str | None = None, *, connection: kombu.Connection | None = None
    ) -> None:
        self.connection = connection or connect(url)
        self.queue = service_queue()

    def declare(self) -> None:
        self.queue(self.connection.default_channel).declare()

    def drain(self, *, idle_timeout: float = 1.0) -> int:
        """Consume until no message arrives for ``idle_timeout`` seconds; return the count."""
        receiver = Receiver()
        idle_since = time.monotonic()
        with kombu.Consumer(
            self.connection.default_channel,
            queues=[self.queue],
            on_message=receiver,
            prefetch_count=get_settings().prefetch_count,
        ):
            while time.monotonic() - idle_since < idle_timeout:
                try:
                    self.connection.drain_events(timeout=receiver.delay or 0.01)
                    idle_since = time.monotonic()
                except TimeoutError:
                    receiver.flush()
            receiver.flush()
        return receiver.handled

    def close(self) -> None:
        self.connection.release()
