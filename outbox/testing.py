"""Helpers for your own test suite: run the relay without a broker.

:class:`InMemoryPublisher` is a publisher that accepts every message and hands it to a
callback; :func:`relay_to` drains the outbox through it, marking rows sent exactly as the
real relay does. ``inbox.testing.deliver_outbox`` uses it to feed this service's own inbox.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.utils import timezone

from inbox_outbox.cloudevents import Outgoing, amqp_properties, encode
from inbox_outbox.conf import get_settings

from .publisher import BatchResult, Publisher
from .relay import Relay

#: Receives each published message as the broker would carry it: body and AMQP properties.
Deliver = Callable[[bytes, dict[str, Any]], None]


class InMemoryPublisher(Publisher):
    """Confirms every message at once and hands it to ``deliver``."""

    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver
        self.result = BatchResult()

    def send(self, batch: Sequence[Outgoing]) -> None:
        self.result = result = BatchResult()
        source, now = get_settings().service, timezone.now()
        for message in batch:
            self.deliver(encode(message, source=source), amqp_properties(message, now=now))
            result.sent.add(message.id)

    def collect(self) -> BatchResult:
        return self.result


def relay_to(deliver: Deliver, *, using: str | None = None) -> int:
    """Relay every due outbox row to ``deliver``, in relay order; return how many."""
    relay = Relay(using=using, publisher=InMemoryPublisher(deliver))
    try:
        return relay.drain()
    finally:
        relay.close()
