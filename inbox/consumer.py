"""Consuming the service's queue: declare it, receive, process, acknowledge after commit."""

from __future__ import annotations

import logging
import time
from typing import Any

import kombu
from django.db import DatabaseError, InterfaceError

from outbox.conf import broker_url, get_settings

from .processing import process_delivery
from .registry import registry

logger = logging.getLogger(__name__)

#: How long to pause before requeueing a delivery the database could not take.
DATABASE_DOWN_PAUSE = 1.0


def service_queue() -> kombu.Queue:
    """The service's durable queue, bound to every topic its handlers declare.

    All workers of one service share it (a consumer group); another service has its own.
    """
    conf = get_settings()
    exchange = kombu.Exchange(conf.exchange, "topic", durable=True)
    topics = sorted(registry.topics())
    return kombu.Queue(
        conf.queue_name,
        exchange=exchange,
        durable=True,
        auto_delete=False,
        bindings=[kombu.binding(exchange, routing_key=t) for t in topics],
    )


def on_message(message: kombu.Message) -> None:
    """Process one delivery and acknowledge it only once the inbox has it durably.

    The database connection is kept across deliveries (a reconnect per message would cost
    more than the message); a connection that failed is closed below and reopened by the
    next delivery.
    """
    try:
        process_delivery(message.body, dict(message.properties), message.headers)
    except (DatabaseError, InterfaceError) as exc:
        # Nothing is durable: hand the delivery back to the broker and slow down.
        logger.warning("inbox: database unavailable (%s); requeueing message", exc)
        from django.db import connections

        for conn in connections.all(initialized_only=True):
            conn.close_if_unusable_or_obsolete()
        time.sleep(DATABASE_DOWN_PAUSE)
        message.requeue()
        return
    message.ack()


class QueueConsumer:
    """A plain kombu consumer of the service queue, for ``manage.py inbox_consume`` and the demo."""

    def __init__(
        self, url: str | None = None, *, connection: kombu.Connection | None = None
    ) -> None:
        self.connection = connection or kombu.Connection(url or broker_url())
        self.queue = service_queue()

    def declare(self) -> None:
        self.queue(self.connection.default_channel).declare()

    def drain(self, *, idle_timeout: float = 1.0, max_messages: int | None = None) -> int:
        """Consume until no message arrives for ``idle_timeout`` seconds; return the count."""
        count = 0

        def _on_message(message: kombu.Message) -> None:
            nonlocal count
            on_message(message)
            count += 1

        with kombu.Consumer(
            self.connection.default_channel,
            queues=[self.queue],
            on_message=_on_message,
            prefetch_count=get_settings().prefetch_count,
        ):
            while max_messages is None or count < max_messages:
                try:
                    self.connection.drain_events(timeout=idle_timeout)
                except TimeoutError:
                    break
        return count

    def run(self, stop: Any) -> None:
        """Consume until ``stop`` (a threading.Event) is set, reconnecting on failures."""
        while not stop.is_set():
            try:
                self.declare()
                with kombu.Consumer(
                    self.connection.default_channel,
                    queues=[self.queue],
                    on_message=on_message,
                    prefetch_count=get_settings().prefetch_count,
                ):
                    while not stop.is_set():
                        try:
                            self.connection.drain_events(timeout=1.0)
                        except TimeoutError:
                            continue
            except self.connection.recoverable_connection_errors as exc:
                logger.warning("inbox: broker connection lost (%s); reconnecting", exc)
                self.connection.collect()
                stop.wait(1.0)
                self.connection = self.connection.clone()

    def close(self) -> None:
        self.connection.release()
