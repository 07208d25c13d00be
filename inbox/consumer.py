"""Consuming the service's queue: declare it, receive, process, acknowledge after commit."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kombu
from django.db import connections

from inbox_outbox.broker import connect, events_exchange
from inbox_outbox.conf import get_settings
from inbox_outbox.faults import blames_content
from inbox_outbox.limits import printable

from .processing import Delivery, process_batch, process_delivery
from .registry import registry
from .shortstr import decode_leniently

logger = logging.getLogger(__name__)

#: How long to pause before requeueing deliveries the database could not take.
DATABASE_DOWN_PAUSE = 1.0


class Settle(enum.Enum):
    """What to tell the broker of one delivery."""

    #: Durable in the inbox (handled, waiting, failed, dead or rejected): acknowledge.
    ACK = "ack"
    #: The database could not take it: give it back (``basic.nack`` with requeue).
    REQUEUE = "requeue"
    #: Not storable even as rejected: refuse it without requeue (to the dead-letter queue).
    DEAD_LETTER = "dead-letter"


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
        decode_leniently()  # a non-UTF-8 message_id must reach us, not kill the connection
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
                self.settle(batch, self.handle(batch))

    def handle(self, batch: list[kombu.Message]) -> list[Settle]:
        """Make ``batch`` durable in the inbox; return what to tell the broker of each delivery.

        Never raises: a delivery whose content is bad is stored rejected by the processing
        (and acked); an error of the database sends the batch back (requeue) after a pause;
        a delivery that cannot even be stored as rejected goes to the dead-letter queue.
        Thread-safe apart from the broker: it touches no channel, so :class:`~inbox.lanes.Lanes`
        runs it on handler threads and settles on the consuming thread.
        """
        deliveries = [_delivery(m) for m in batch]
        try:
            if len(batch) == 1:
                process_delivery(*deliveries[0])
            else:
                process_batch(deliveries)
        except Exception as exc:
            if not blames_content(exc):
                return self._database_down(exc, len(batch))
            # Some delivery could not even be stored as rejected: find it, alone.
            return [self._handle_alone(delivery) for delivery in deliveries]
        return [Settle.ACK] * len(batch)

    def _handle_alone(self, delivery: Delivery) -> Settle:
        try:
            process_delivery(*delivery)
        except Exception as exc:
            if not blames_content(exc):
                return self._database_down(exc, 1)[0]
            logger.error(
                "inbox: a delivery could not be stored, not even as rejected; it goes to the "
                "queue's dead-letter exchange (if any). Body %s, properties %s",
                printable(delivery[0], 500),
                printable(delivery[1], 500),
                exc_info=True,
            )
            return Settle.DEAD_LETTER
        return Settle.ACK

    def _database_down(self, exc: BaseException, count: int) -> list[Settle]:
        # Nothing is durable: the deliveries go back to the broker, and we slow down.
        logger.warning(
            "inbox: database unavailable (%s); requeueing %d message(s)",
            printable(exc, 500),
            count,
        )
        for conn in connections.all(initialized_only=True):
            conn.close_if_unusable_or_obsolete()
        time.sleep(DATABASE_DOWN_PAUSE)
        return [Settle.REQUEUE] * count

    def settle(self, batch: list[kombu.Message], outcomes: list[Settle]) -> None:
        """Tell the broker what became of each delivery of ``batch``; on the consuming thread.

        Acknowledged once durable; requeued (``basic.nack``, which spends no delivery limit)
        when the database could not take it; rejected without requeue only when it could not
        be stored at all.
        """
        for message, outcome in zip(batch, outcomes, strict=True):
            if outcome is Settle.ACK:
                message.ack()
                self.handled += 1
            elif outcome is Settle.REQUEUE:
                message.requeue()
            else:
                message.reject(requeue=False)


def _delivery(message: kombu.Message) -> Delivery:
    body = message.body if message.body is not None else b""
    return body, dict(message.properties), dict(message.headers or {})


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
