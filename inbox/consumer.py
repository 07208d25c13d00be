"""Consuming the service's queue: declare it, receive, process, acknowledge after commit."""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import kombu
import kombu.exceptions
from django.db import connections

from inbox_outbox import tracing
from inbox_outbox.backoff import backoff_seconds
from inbox_outbox.broker import bound_calls, connect
from inbox_outbox.conf import get_settings
from inbox_outbox.faults import blames_content
from inbox_outbox.limits import printable

from . import topology
from .processing import Delivery, process_batch, process_delivery
from .shortstr import decode_leniently
from .topology import service_queue

__all__ = ["QueueConsumer", "Receiver", "Settle", "service_queue"]

logger = logging.getLogger(__name__)

#: The first pause before the database is tried again for deliveries it could not take.
DATABASE_DOWN_PAUSE = 1.0
#: The longest pause between two tries while deliveries are held.
DATABASE_DOWN_MAX_PAUSE = 15.0
#: How long :class:`QueueConsumer` tries to reach the broker (every node of its failover
#: list in turn) before it gives up, in seconds.
RECONNECT_TIMEOUT = 30.0
#: The longest any single read or write on :class:`QueueConsumer`'s socket may block.
CALL_TIMEOUT = 5.0


class _DatabaseDown(Exception):
    """The database could not take the batch: nothing of it (that was not already) is durable."""


class Settle(enum.Enum):
    """What to tell the broker of one delivery."""

    #: Durable in the inbox (handled, waiting, failed, dead or rejected): acknowledge.
    ACK = "ack"
    #: The database could not take it: give it back (``basic.nack`` with requeue).
    REQUEUE = "requeue"
    #: Not storable even as rejected: refuse it without requeue (to the dead-letter queue).
    DEAD_LETTER = "dead-letter"


class Receiver:
    """Buffers deliveries and handles them in batches; acknowledges only after commit.

    A batch is handled when it reaches ``INBOX_BATCH_SIZE`` deliveries or when
    ``flush()`` is called, which the caller schedules ``INBOX_BATCH_DELAY`` after the
    first buffered delivery. The database connection is kept across batches (a
    reconnect per message would cost more than the message); a failed connection is
    closed and reopened by the next batch.
    """

    def __init__(
        self,
        *,
        schedule: Callable[[float, Callable[[], None]], Any] | None = None,
        hold_seconds: float | None = None,
    ) -> None:
        conf = get_settings()
        decode_leniently()  # a non-UTF-8 message_id must reach us, not kill the connection
        self.batch_size = max(1, conf.inbox_batch_size)
        self.delay = conf.inbox_batch_delay
        self.schedule = schedule
        #: How long a batch the database cannot take is held before it goes back.
        self.hold_seconds = conf.inbox_hold_seconds if hold_seconds is None else hold_seconds
        self.pending: list[kombu.Message] = []
        self.handled = 0
        self._lock = threading.RLock()
        self._halt = threading.Event()

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
                outcomes = self.handle(batch)
                self.settle(batch, outcomes, unsettled=[m.delivery_tag for m in self.pending])

    def halt(self) -> None:
        """Stop holding: a batch waiting for the database goes back to the broker now."""
        self._halt.set()

    def handle(self, batch: list[kombu.Message]) -> list[Settle]:
        """Make ``batch`` durable in the inbox; return what to tell the broker of each delivery.

        Never raises: a delivery whose content is bad is stored rejected by the processing
        (and acked); a delivery that cannot even be stored as rejected goes to the dead-letter
        queue. While the database is down the batch is *held*, unacknowledged, and the
        database tried again with backoff, for up to ``INBOX_HOLD_SECONDS``: a quorum queue
        counts every delivery it gets back (RabbitMQ 3.x counts ``basic.nack`` too) against
        its delivery limit, and counts nothing while the deliveries stay with a live consumer.
        Only past the hold (or when stopping) do they go back (requeue). Trying again is safe:
        what the first try made durable is a duplicate the second time.

        Thread-safe apart from the broker: it touches no channel, so :class:`~inbox.lanes.Lanes`
        runs it on handler threads (whose holding never delays the event loop's heartbeats)
        and settles on the consuming thread.
        """
        deliveries = [_delivery(m) for m in batch]
        held_since = time.monotonic()
        tries = 0
        while True:
            try:
                return self._try(deliveries)
            except _DatabaseDown as down:
                tries += 1
                if not self._hold(down.__cause__ or down, len(batch), tries, held_since):
                    return [Settle.REQUEUE] * len(batch)

    def _try(self, deliveries: list[Delivery]) -> list[Settle]:
        try:
            if len(deliveries) == 1:
                process_delivery(*deliveries[0])
            else:
                process_batch(deliveries)
        except Exception as exc:
            if not blames_content(exc):
                raise _DatabaseDown() from exc
            # Some delivery could not even be stored as rejected: find it, alone.
            return [self._handle_alone(delivery) for delivery in deliveries]
        return [Settle.ACK] * len(deliveries)

    def _handle_alone(self, delivery: Delivery) -> Settle:
        try:
            process_delivery(*delivery)
        except Exception as exc:
            if not blames_content(exc):
                raise _DatabaseDown() from exc
            logger.error(
                "inbox: a delivery could not be stored, not even as rejected; it goes to the "
                "queue's dead-letter exchange (if any). Body %s, properties %s",
                printable(delivery[0], 500),
                printable(delivery[1], 500),
                exc_info=True,
            )
            return Settle.DEAD_LETTER
        return Settle.ACK

    def _hold(self, exc: BaseException, count: int, tries: int, since: float) -> bool:
        """Wait before the database is tried again; False when the batch must go back."""
        for conn in connections.all(initialized_only=True):
            conn.close_if_unusable_or_obsolete()
        delay = backoff_seconds(tries, DATABASE_DOWN_PAUSE, DATABASE_DOWN_MAX_PAUSE)
        held = time.monotonic() - since
        if held + delay > self.hold_seconds:
            if not self.hold_seconds:  # no holding: the old pause, so a requeue is no spin
                self._halt.wait(DATABASE_DOWN_PAUSE)
            logger.warning(
                "inbox: database unavailable (%s); returning %d message(s) to the broker "
                "after holding them %.0fs (INBOX_HOLD_SECONDS)",
                printable(exc, 500),
                count,
                held,
            )
            return False
        log = logger.warning if tries == 1 or tries % 20 == 0 else logger.debug
        log(
            "inbox: database unavailable (%s); holding %d message(s), try %d in %.1fs",
            printable(exc, 500),
            count,
            tries + 1,
            delay,
        )
        return not self._halt.wait(delay)

    def settle(
        self,
        batch: list[kombu.Message],
        outcomes: list[Settle],
        *,
        unsettled: Collection[Any] = (),
    ) -> None:
        """Tell the broker what became of each delivery of ``batch``; on the consuming thread.

        Acknowledged once durable; given back with ``basic.nack`` (requeue) when the database
        could not take it within the hold; rejected without requeue only when it could not be
        stored at all. ``unsettled`` holds the delivery tags of every other delivery not yet
        settled (a batch still in a lane's hands): see :func:`acknowledge`.
        """
        by_outcome: dict[Settle, list[kombu.Message]] = {outcome: [] for outcome in Settle}
        for message, outcome in zip(batch, outcomes, strict=True):
            by_outcome[outcome].append(message)
        give_back(by_outcome[Settle.REQUEUE])
        dead_letter(by_outcome[Settle.DEAD_LETTER])
        acknowledge(by_outcome[Settle.ACK], unsettled=unsettled)  # last: see its docstring
        self.handled += len(by_outcome[Settle.ACK])


@tracing.settles("nack")
def give_back(messages: list[kombu.Message]) -> None:
    """Give ``messages`` back to their queue (:func:`requeue`, each)."""
    for message in messages:
        requeue(message)


@tracing.settles("reject")
def dead_letter(messages: list[kombu.Message]) -> None:
    """Refuse ``messages`` without requeue: to the queue's dead-letter exchange, if any."""
    for message in messages:
        message.reject(requeue=False)


@tracing.settles("ack")
def acknowledge(messages: list[kombu.Message], *, unsettled: Collection[Any] = ()) -> None:
    """Acknowledge ``messages``, most of them with one ``basic.ack`` (``multiple``).

    ``basic.ack`` with ``multiple`` acknowledges every outstanding delivery of the channel up
    to its tag, so it may only cover tags below every delivery not yet durable: those in
    ``unsettled``, and this batch's others, settled (requeued or rejected) before this is
    called. The messages below that floor, on one AMQP channel, go in one ``basic.ack``; the
    rest (and transports without AMQP methods, such as kombu's in-memory one) one each.
    """
    comparable = all(isinstance(tag, int) for tag in unsettled)
    floor = min(unsettled, default=None) if comparable else None
    runs: dict[int, list[tuple[int, kombu.Message]]] = {}
    for message in messages:
        channel = getattr(message, "channel", None)
        tag: Any = getattr(message, "delivery_tag", None)  # an int on AMQP
        if (
            comparable
            and hasattr(channel, "send_method")
            and isinstance(tag, int)
            and (floor is None or tag < floor)
        ):
            runs.setdefault(id(channel), []).append((tag, message))
        else:
            message.ack()
    for run in runs.values():
        _, last = max(run, key=lambda tagged: tagged[0])
        last.ack(multiple=len(run) > 1)
        for _, message in run:
            if message is not last:
                state: Any = message  # kombu keeps the settled state in ``_state`` (untyped)
                state._state = "ACK"  # as its own ack() records it


def requeue(message: kombu.Message) -> None:
    """Give ``message`` back to its queue with ``basic.nack`` (requeue), never ``basic.reject``
    (which kombu's ``Message.requeue()`` sends). Transports without AMQP methods (kombu's
    in-memory one) requeue their own way."""
    channel = getattr(message, "channel", None)
    if channel is None or not hasattr(channel, "send_method"):
        message.requeue()
        return
    state: Any = message  # kombu keeps the settled state in ``_state`` (untyped)
    if message.acknowledged:
        raise kombu.exceptions.MessageStateError(
            f"Message already acknowledged with state: {state._state}"
        )
    topology.nack(channel, message.delivery_tag)
    state._state = "REQUEUED"  # as kombu's own requeue() records it


def _delivery(message: kombu.Message) -> Delivery:
    body = message.body if message.body is not None else b""
    return body, dict(message.properties), dict(message.headers or {})


class QueueConsumer:
    """A plain kombu consumer of the service queue, outside Celery (the demo uses it).

    When its broker connection drops (the node stopped, killed or cut off), it reconnects,
    to the next node first when ``url`` lists several (kombu's failover list), trying the
    nodes in turn for up to ``reconnect_timeout`` seconds before it raises kombu's
    ``OperationalError``, and consumes on. What it held unacknowledged goes back to the
    queue with the dead connection and is delivered again; what of it was already durable
    is a duplicate the inbox recognises. Every network call is bounded: connecting by
    ``CONNECT_TIMEOUT`` (:func:`inbox_outbox.broker.connect`), every other read or write by
    ``call_timeout``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        connection: kombu.Connection | None = None,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.connection = connection or connect(url)
        self.queue = service_queue()
        self.reconnect_timeout = reconnect_timeout
        self.call_timeout = call_timeout
        #: How many times the connection dropped (each followed by a reconnect).
        self.reconnects = 0

    def declare(self) -> None:
        """Declare the service's topology (raises ``TopologyMismatch`` for a queue of
        another type or other arguments)."""
        self._ensure_connection()
        topology.declare(self.connection)

    def drain(self, *, idle_timeout: float = 1.0) -> int:
        """Consume until no message arrives for ``idle_timeout`` seconds; return the count
        handled (a delivery handled again after a reconnect counts again)."""
        receiver = Receiver()
        while True:
            self._ensure_connection()
            try:
                self._consume(receiver, idle_timeout=idle_timeout)
            except self._connection_errors() as exc:
                self._lost(exc, receiver)
                continue
            return receiver.handled

    def _consume(self, receiver: Receiver, *, idle_timeout: float) -> None:
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
                except TimeoutError:  # an OSError too: before the connection's errors
                    receiver.flush()
            receiver.flush()

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        """What a dropped connection raises; not a channel's errors (a queue missing or of
        another type), which no reconnect cures."""
        return (*self.connection.connection_errors, OSError)

    def _ensure_connection(self) -> None:
        """Connected, within ``reconnect_timeout``, with every call on it bounded."""
        if self.connection.connected:
            return

        def failed(exc: Exception, interval: float) -> None:
            logger.warning(
                "inbox: cannot reach the broker at %s (%s); trying %s in %.1fs",
                self.connection.as_uri(),
                printable(exc, 500),
                "the next node" if self.connection.alt else "again",
                interval,
            )

        self.connection.ensure_connection(
            errback=failed,
            interval_start=1,  # between rounds over every node; none between two nodes
            interval_step=1,
            interval_max=5,
            timeout=math.ceil(self.reconnect_timeout),
        )
        bound_calls(self.connection, self.call_timeout)

    def _lost(self, exc: BaseException, receiver: Receiver) -> None:
        """The connection dropped: forget it (no closing handshake with a broker that may be
        gone) and what it delivered, and move to the next node, if any."""
        dropped = len(receiver.pending)
        receiver.pending.clear()  # unacknowledged: the broker delivers them again
        self.connection.collect()
        if self.connection.alt:
            self.connection.maybe_switch_next()
        self.reconnects += 1
        logger.warning(
            "inbox: broker connection lost (%s); %d unacknowledged deliveries go back to the "
            "queue; reconnecting to %s",
            printable(exc, 500),
            dropped,
            self.connection.as_uri(),
        )

    def close(self) -> None:
        try:
            self.connection.release()
        except (*self._connection_errors(), *self.connection.channel_errors):
            self.connection.collect()  # gone or not answering: drop it without a word
