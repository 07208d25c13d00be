"""Putting claimed messages on the broker and learning what the broker accepted.

On AMQP (RabbitMQ) a batch goes out on a confirm-mode channel with the mandatory
flag; every message is published back to back and the relay then waits for the
broker's acks (a window of confirms instead of one round trip per message). A
message the broker returns (no queue bound) is reported as unroutable; one it nacks as
refused: RabbitMQ nacks a publish only when a queue it routes to cannot take it (full with
``x-overflow: reject-publish``, a quorum queue without a leader), which is the broker's state,
never the message's fault, so the relay tries it again later without charging an attempt.

Other kombu transports (Redis, in-memory) have no confirms: a publish that
returns without error counts as accepted.

Faults are told apart where they arise. A message that cannot be encoded (py-amqp refuses
a topic or header name over 255 bytes, an integer past 64 bits, a string that is not
UTF-8) fails alone: it is reported in ``BatchResult.failed`` and the rest of the batch goes
out. py-amqp serializes a frame completely before writing any of it, so such a refusal
leaves the connection clean. Only transport errors mean the broker is unavailable.

No call waits on the broker without a bound: the socket carries a timeout for every read
and write, confirms are awaited for ``confirm_timeout``, and a connection that failed or
timed out is dropped without the closing handshake a hung broker would never answer.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import amqp
import kombu
from django.utils import timezone

from inbox_outbox.broker import Nodes, bound_calls, has_confirms
from inbox_outbox.cloudevents import Outgoing

from .exceptions import BrokerUnavailable
from .wire import frame

logger = logging.getLogger(__name__)

#: What encoding one message can raise, in ``encode``, ``amqp_properties`` or py-amqp's
#: serializer (``struct.error`` for a short string over 255 bytes or an integer past 64
#: bits, ``FrameSyntaxError`` for a value type AMQP tables lack, ``UnicodeError`` for a
#: lone surrogate). Raised before anything is written, so they are that message's fault.
ENCODE_ERRORS: tuple[type[BaseException], ...] = (
    struct.error,
    amqp.exceptions.FrameSyntaxError,
    UnicodeError,
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
)


def encode_error(exc: BaseException) -> str:
    return f"cannot be encoded for AMQP: {type(exc).__name__}: {exc}"


@dataclass
class BatchResult:
    """What became of each message of a batch.

    ``sent``: confirmed by the broker. ``unroutable``: returned by the broker because no
    queue was bound. ``refused``: nacked by the broker (a queue full or unavailable): not
    confirmed, to be tried again, uncharged. ``failed``: the message's own fault (it cannot
    be encoded), with the reason. Messages in none of these were not confirmed (the
    connection dropped): they stay unsent, uncharged.
    """

    sent: set[uuid.UUID] = field(default_factory=set)
    unroutable: set[uuid.UUID] = field(default_factory=set)
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    refused: set[uuid.UUID] = field(default_factory=set)


class Publisher:
    """Interface of a batch publisher: ``send`` a batch, later ``collect`` its outcome.

    Between the two the caller may do other work (the relay claims its next batch) while
    the broker's confirms are on their way. At most one batch is outstanding.
    """

    def send(self, batch: Sequence[Outgoing]) -> None:
        raise NotImplementedError

    def collect(self) -> BatchResult:
        """Wait for the outcome of the last ``send``; raise ``BrokerUnavailable`` if none came."""
        raise NotImplementedError

    def publish(self, batch: Sequence[Outgoing]) -> BatchResult:
        self.send(batch)
        return self.collect()

    def close(self) -> None:
        """Release the connection; the next send reconnects."""


class AmqpPublisher(Publisher):
    """Publishes over py-amqp with publisher confirms and ``mandatory``."""

    def __init__(
        self,
        url: str,
        *,
        exchange: str,
        source: str,
        confirm_timeout: float,
        call_timeout: float = 5.0,
    ) -> None:
        self.url = url
        #: The broker's nodes: one URL, or several (``"amqp://a//;amqp://b//"``) to fail over.
        self.nodes = Nodes(url)
        self.exchange = exchange
        self.source = source
        self.confirm_timeout = confirm_timeout
        #: The longest any single read or write on the broker's socket may block.
        self.call_timeout = call_timeout
        self._connection: kombu.Connection | None = None
        self._channel: amqp.Channel | None = None
        self._next_tag = 0
        self._in_flight: dict[int, uuid.UUID] = {}
        self._result = BatchResult()
        self._send_error: BaseException | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    def _ensure_channel(self) -> Any:
        """The open confirm-mode channel (py-amqp's), connecting first if there is none.

        A new connection goes to the next of the broker's nodes (:class:`Nodes`), each tried
        once: a relay whose node died publishes through another one, with no backoff between
        a node that refused and the next."""
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._drop()
        failures = []
        for connection in self.nodes.connections():
            errors = _transport_errors(connection)
            try:
                channel = self._open(connection)
            except errors as exc:
                _collect(connection)
                failures.append(f"{connection.as_uri()}: {exc}")
                continue
            self._connection, self._channel, self._next_tag = connection, channel, 0
            self._errors = (*errors, TimeoutError)
            if failures:
                logger.warning(
                    "outbox: publishing through %s (%s)", connection.as_uri(), "; ".join(failures)
                )
            return channel
        raise BrokerUnavailable(f"cannot reach the broker at {'; '.join(failures)}")

    def _open(self, connection: kombu.Connection) -> Any:
        connection.connect()
        bound_calls(connection, self.call_timeout)
        # py-amqp's Channel on this transport (its stubs lack ``events``).
        channel: Any = connection.channel()
        channel.exchange_declare(self.exchange, "topic", durable=True, auto_delete=False)
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        return channel

    def _settle(self, delivery_tag: int, multiple: bool, nacked: bool) -> None:
        # Tags are sequential and ``_in_flight`` keeps insertion order, so a ``multiple``
        # confirm settles a prefix of it.
        if multiple:
            tags = []
            for tag in self._in_flight:
                if tag > delivery_tag:
                    break
                tags.append(tag)
        else:
            tags = [delivery_tag]
        for tag in tags:
            message_id = self._in_flight.pop(tag, None)
            if message_id is None:
                continue
            if nacked:
                self._result.refused.add(message_id)
            elif message_id not in self._result.unroutable:
                self._result.sent.add(message_id)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, False)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, True)

    def _on_return(
        self, exc: Exception, exchange: str, routing_key: str, message: amqp.Message
    ) -> None:
        # RabbitMQ sends basic.return before the ack of the same message.
        message_id = message.properties.get("message_id")
        if message_id:
            self._result.unroutable.add(uuid.UUID(message_id))

    def send(self, batch: Sequence[Outgoing]) -> None:
        channel = self._ensure_channel()
        self._result = BatchResult()
        self._in_flight = {}
        self._send_error = None
        now = timezone.now()
        unencodable: set[tuple[str, str]] = set()  # keys whose earlier message failed to encode
        try:
            for message in batch:
                if message.key is not None and (message.topic, message.key) in unencodable:
                    continue  # not published, so not confirmed: it stays unsent, uncharged
                try:
                    out = frame(message, exchange=self.exchange, source=self.source, now=now)
                    channel.basic_publish(
                        amqp.Message(out.body, **out.properties),
                        exchange=out.exchange,
                        routing_key=out.routing_key,
                        mandatory=True,
                    )
                except ENCODE_ERRORS as exc:  # before its first byte: the connection is fine
                    self._result.failed[message.id] = encode_error(exc)
                    if message.key is not None:
                        unencodable.add((message.topic, message.key))
                    continue
                self._next_tag += 1
                self._in_flight[self._next_tag] = message.id
        except self._errors as exc:
            self._send_error = exc  # reported by collect(), with whatever was confirmed

    def collect(self) -> BatchResult:
        try:
            if self._send_error is not None:
                raise self._send_error
            deadline = time.monotonic() + self.confirm_timeout
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._in_flight)} publisher confirms did not arrive "
                        f"within {self.confirm_timeout}s"
                    )
                assert self._connection is not None
                self._connection.drain_events(timeout=remaining)
        except self._errors as exc:
            self._drop()  # a broker that let a confirm time out may not answer a close either
            result = self._result
            if result.sent or result.failed or result.unroutable or result.refused:
                logger.warning("outbox: broker connection lost mid-batch: %s", exc)
                return self._result  # what was confirmed counts; the rest stays unsent
            raise BrokerUnavailable(f"publishing to the broker failed: {exc}") from exc
        return self._result

    def close(self) -> None:
        """Close the connection with the AMQP handshake, bounded by ``call_timeout``."""
        connection, self._connection, self._channel = self._connection, None, None
        self._in_flight = {}
        if connection is not None:
            try:
                connection.release()
            except Exception:  # gone or not answering: drop it without the handshake
                logger.debug("outbox: error closing broker connection", exc_info=True)
                _collect(connection)

    def _drop(self) -> None:
        """Forget the connection at once: no closing handshake with a broker that may hang."""
        connection, self._connection, self._channel = self._connection, None, None
        self._in_flight = {}
        if connection is not None:
            _collect(connection)


def _transport_errors(connection: kombu.Connection) -> tuple[type[BaseException], ...]:
    """What ``connection``'s transport raises when the broker is down or unreachable."""
    return (*connection.connection_errors, *connection.channel_errors, OSError)


def _collect(connection: kombu.Connection) -> None:
    """Close ``connection``'s socket without talking to the broker."""
    try:
        connection.collect()
    except (OSError, AttributeError):
        logger.debug("outbox: error dropping broker connection", exc_info=True)


class KombuPublisher(Publisher):
    """Publishes through any kombu transport; used where AMQP confirms do not exist."""

    def __init__(self, url: str | kombu.Connection, *, exchange: str, source: str) -> None:
        self.connection = url if isinstance(url, kombu.Connection) else kombu.Connection(url)
        self.exchange = kombu.Exchange(exchange, "topic", durable=True)
        self.source = source
        self._producer: kombu.Producer | None = None
        self._result = BatchResult()
        self._send_error: BaseException | None = None

    def send(self, batch: Sequence[Outgoing]) -> None:
        self._result = result = BatchResult()
        self._send_error = None
        now = timezone.now()
        try:
            if self._producer is None:
                channel = self.connection.channel()
                self._producer = kombu.Producer(channel, exchange=self.exchange)
                self.exchange(channel).declare()
            for message in batch:
                try:
                    out = frame(message, exchange=self.exchange.name, source=self.source, now=now)
                except ENCODE_ERRORS as exc:
                    result.failed[message.id] = encode_error(exc)
                    continue
                props = dict(out.properties)
                headers = props.pop("application_headers", {})
                props.pop("delivery_mode")
                self._producer.publish(
                    out.body,
                    exchange=kombu.Exchange(out.exchange),  # an instance: "" is the default one
                    routing_key=out.routing_key,
                    headers=headers,
                    delivery_mode=2,
                    serializer=None,
                    **props,
                )
                result.sent.add(message.id)
        except _transport_errors(self.connection) as exc:
            self.close()
            self._send_error = exc

    def collect(self) -> BatchResult:
        if self._send_error is not None and not self._result.sent:
            raise BrokerUnavailable(f"publishing to the broker failed: {self._send_error}")
        return self._result

    def close(self) -> None:
        self._producer = None
        try:
            self.connection.release()
        except Exception:
            logger.debug("outbox: error closing broker connection", exc_info=True)


def make_publisher(url: str, *, exchange: str, source: str, confirm_timeout: float) -> Publisher:
    """The best publisher for ``url``'s transport."""
    if has_confirms(url):
        return AmqpPublisher(url, exchange=exchange, source=source, confirm_timeout=confirm_timeout)
    return KombuPublisher(url, exchange=exchange, source=source)
