"""Broker connections and the topology both apps share: the durable topic exchange every
service publishes to (the routing key is the topic), connections that never wait forever,
and which node of a cluster a process connects to next."""

from __future__ import annotations

from collections.abc import Iterator

import kombu

from .conf import broker_url, get_settings, split_broker_urls

#: Seconds to wait for a TCP connection and the AMQP handshake.
CONNECT_TIMEOUT = 5.0
#: AMQP transports with publisher confirms (and basic.return for ``mandatory``).
AMQP_TRANSPORTS = ("amqp", "pyamqp", "amqps")


def connect(url: str | None = None) -> kombu.Connection:
    """A (lazy) connection to ``url``, by default the configured broker, with timeouts.

    Several URLs (``"amqp://a//;amqp://b//"``) are kombu's failover list: ``connect()`` and
    ``ensure_connection()`` move on to the next node (round-robin) when one cannot be reached.
    """
    return kombu.Connection(
        url or broker_url(), connect_timeout=CONNECT_TIMEOUT, failover_strategy="round-robin"
    )


def bound_calls(connection: kombu.Connection, seconds: float) -> None:
    """Bound every later read and write on ``connection``'s socket to ``seconds``.

    py-amqp leaves the socket blocking with no timeout once connected (its ``drain_events``
    sets its own timeout and restores this one). Transports without a socket (kombu's
    in-memory one) have nothing to bound."""
    transport = getattr(connection.connection, "transport", None)
    sock = getattr(transport, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


class Nodes:
    """The broker's nodes (one URL each) in the order a long-lived process tries them.

    :meth:`connections` offers a connection to every node once, starting with the node after
    the one offered last: a process whose connection died (its node was stopped, killed or cut
    off) reconnects to the next node instead of waiting for its own to come back, and a node
    that is down costs one connection attempt (a refusal at once, at worst ``CONNECT_TIMEOUT``).
    With one URL it is that URL every time. Any node of a cluster serves every queue: a
    client connected to a node that is not the queue's leader is forwarded by the broker.
    """

    def __init__(self, url: str) -> None:
        urls, wrong = split_broker_urls(url)
        if wrong:
            raise ValueError(f"broker URL {url!r} {wrong}")
        self.urls = urls
        self._offered = len(urls) - 1  # the index of the node offered last: start at the first

    def connections(self) -> Iterator[kombu.Connection]:
        """A fresh (lazy) connection to each node in turn, at most once per node."""
        for _ in range(len(self.urls)):
            self._offered = (self._offered + 1) % len(self.urls)
            yield connect(self.urls[self._offered])


def events_exchange() -> kombu.Exchange:
    """The durable topic exchange named by ``INBOX_OUTBOX["EXCHANGE"]``."""
    return kombu.Exchange(get_settings().exchange, "topic", durable=True, auto_delete=False)


def has_confirms(url: str) -> bool:
    """Whether ``url``'s transport is AMQP, with publisher confirms."""
    return kombu.Connection(url).transport_cls in AMQP_TRANSPORTS
