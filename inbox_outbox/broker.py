"""Broker connections and the topology both apps share: the durable topic exchange every
service publishes to (the routing key is the topic), and connections that never wait
forever."""

from __future__ import annotations

import kombu

from .conf import broker_url, get_settings

#: Seconds to wait for a TCP connection and the AMQP handshake.
CONNECT_TIMEOUT = 5.0
#: AMQP transports with publisher confirms (and basic.return for ``mandatory``).
AMQP_TRANSPORTS = ("amqp", "pyamqp", "amqps")


def connect(url: str | None = None) -> kombu.Connection:
    """A (lazy) connection to ``url``, by default the configured broker, with timeouts."""
    return kombu.Connection(url or broker_url(), connect_timeout=CONNECT_TIMEOUT)


def events_exchange() -> kombu.Exchange:
    """The durable topic exchange named by ``INBOX_OUTBOX["EXCHANGE"]``."""
    return kombu.Exchange(get_settings().exchange, "topic", durable=True, auto_delete=False)


def has_confirms(url: str) -> bool:
    """Whether ``url``'s transport is AMQP, with publisher confirms."""
    return kombu.Connection(url).transport_cls in AMQP_TRANSPORTS
