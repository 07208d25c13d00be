"""Turning deliveries into exactly-once effects.

For each handler of a message, one transaction inserts the inbox row
(``ON CONFLICT DO NOTHING`` on (consumer, message id)) and runs the handler. A
duplicate finds the row already there and does nothing; a concurrent duplicate
waits on the unique index until the first commits. Keyed messages first lock the
consumer's progress row for their (topic, key): a message whose predecessor has
not been handled yet is stored as *waiting* and handled when the gap closes.

Every path ends with the message durable in the inbox (processed, waiting, failed,
dead, rejected, stale or void), so the caller may acknowledge the broker afterwards.
Whether a keyed message runs, waits or is stale is decided by :mod:`inbox.ordering`.

Faults are classified where they arise (:func:`inbox_outbox.faults.blames_content`): an
error caused by one delivery's content stores that delivery ``rejected`` with its reason and
raw body; only an error of the database itself propagates, so that the caller requeues.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import json
import logging
import traceback as tb
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connections, router, transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from inbox_outbox import tracing
from inbox_outbox.backoff import backoff_seconds
from inbox_outbox.conf import get_settings
from inbox_outbox.faults import blames_content
from inbox_outbox.limits import (
    LimitError,
    check_id,
    check_text,
    json_text,
    json_value,
    printable,
    storable_text,
    storage_key,
)
from inbox_outbox.logfields import fields

from . import ordering, sql
from .envelope import Envelope, Order, broker_delivery_count, parse, raw_bytes, storable
from .exceptions import DoNotRetry, InvalidMessage, RetryAfter
from .message import Message
from .models import InboxMessage, Status
from .ordering import Position, Stream, Verdict
from .registry import Handler, registry

logger = logging.getLogger(__name__)

#: A delivery as the broker hands it over: body, AMQP properties, AMQP headers.
Delivery = tuple[bytes | str, dict[str, Any], dict[str, Any] | None]


class Outcome(enum.Enum):
    DONE = "done"
    DUPLICATE = "duplicate"
    WAITING = "waiting"
    FAILED = "failed"
    DEAD = "dead"
    REJECTED = "rejected"
    IGNORED = "ignored"
    STALE = "stale"
    VOID = "void"


def _alias(using: str | None) -> str:
    return using or router.db_for_write(InboxMessage)


@dataclass(frozen=True, slots=True)
class NewRow:
    """An inbox row as first written. Every value already fits its column (the envelope was
    checked, or the row is a rejection made of storable values): nothing is cut here."""

    consumer: str
    message_id: str
    status: str
    topic: str = ""
    source: str = ""
    key: str | None = None
    epoch: int | None = None
    sequence: int | None = None
    voids: str | None = None
    payload_json: str = "null"
    headers_json: str = "{}"
    raw: bytes | None = None
    attempts: int = 1
    delivery_count: int | None = None
    error: str = ""
    trace: str = ""
    #: Seconds from the database's now to the next attempt (a failed row).
    retry_in: float | None = None

    @classmethod
    def of(cls, env: Envelope, *, consumer: str, status: str, **fields: Any) -> NewRow:
        """The row of ``env`` for ``consumer``."""
        return cls(
            consumer=consumer,
            message_id=env.id,
            status=status,
            topic=env.topic,
            source=env.source,
            key=env.key,
            epoch=env.order.epoch if env.order is not None else None,
            sequence=env.order.sequence if env.order is not None else None,
            voids=env.voids,
            payload_json=env.payload_json,
            headers_json=env.headers_json,
            delivery_count=env.delivery_count,
            **fields,
        )


def _insert(alias: str, row: NewRow) -> bool:
    """Insert ``row`` unless (consumer, message id) exists; return whether it did."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(sql.insert_row_unless_seen(connection.vendor), _params(row))
        inserted = cursor.fetchone() is not None
    if not inserted:
        _log_duplicate(row)
    return inserted


def _log_duplicate(row: NewRow) -> None:
    logger.debug(
        "inbox: %s already has message %s (a duplicate)",
        row.consumer,
        row.message_id,
        extra=fields(
            message_id=row.message_id, topic=row.topic, key=row.key, consumer=row.consumer
        ),
    )


def _insert_all(alias: str, rows: list[NewRow]) -> set[tuple[str, str]]:
    """Insert each of ``rows`` unless its (consumer, message id) exists, in one statement per
    :func:`_chunks`; return the (consumer, message id) pairs inserted.

    Sorted first, so that two batches sharing ids wait on the unique index in one order."""
    connection = connections[alias]
    ordered = sorted(rows, key=lambda row: (row.consumer, row.message_id))
    inserted: set[tuple[str, str]] = set()
    with connection.cursor() as cursor:
        for chunk in _chunks(ordered):
            if connection.vendor == "postgresql":
                statement = sql.insert_records_unless_seen()
                params: list[Any] = [_records(chunk)]
            else:
                statement = sql.insert_rows_unless_seen(connection.vendor, len(chunk))
                params = [value for row in chunk for value in _params(row)]
            cursor.execute(statement, params)
            inserted.update((consumer, message_id) for consumer, message_id in cursor.fetchall())
    if logger.isEnabledFor(logging.DEBUG):
        for row in ordered:
            if (row.consumer, row.message_id) not in inserted:
                _log_duplicate(row)
    return inserted


def _chunks(rows: list[NewRow]) -> Iterator[list[NewRow]]:
    """``rows`` in order, in chunks of at most :data:`~inbox.sql.ROWS_PER_INSERT` rows and,
    but for a single row, about :data:`~inbox.sql.BYTES_PER_INSERT` of values (a large body
    is quoted twice over in the JSON of :func:`_records`)."""
    chunk: list[NewRow] = []
    size = 0
    for row in rows:
        row_size = 2 * (len(row.payload_json) + len(row.headers_json)) + 2 * len(row.raw or b"")
        if chunk and (len(chunk) >= sql.ROWS_PER_INSERT or size + row_size > sql.BYTES_PER_INSERT):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_size
    if chunk:
        yield chunk


_FIELDS = tuple(name for name, _ in sql.RECORD_FIELDS)
_RAW = _FIELDS.index("raw_body")


def _records(rows: list[NewRow]) -> str:
    """``rows`` as the JSON array of records that :func:`inbox.sql.insert_records_unless_seen`
    reads: each row's parameters (:func:`_params`), its raw body in base64."""
    records = []
    for row in rows:
        values = _params(row)
        if row.raw is not None:
            values[_RAW] = base64.b64encode(row.raw).decode("ascii")
        records.append(dict(zip(_FIELDS, values, strict=True)))
    return json.dumps(records, ensure_ascii=False, allow_nan=False)


def _params(row: NewRow) -> list[Any]:
    """The parameters of ``row``'s insert, in :data:`inbox.sql.ROW_COLUMNS` order."""
    return [
        row.consumer,
        row.message_id,
        row.topic,
        row.source,
        row.key,
        row.epoch,
        row.sequence,
        row.voids,
        row.payload_json,
        row.headers_json,
        row.raw,
        row.status,
        row.attempts,
        row.delivery_count,
        row.status == Status.DONE,  # processed_at: now, on the database's clock
        row.retry_in,  # next_attempt_at: that many seconds from the database's now
        row.error,
        row.trace,
    ]


def stream_of(handler: Handler, env: Envelope) -> Stream | None:
    """The stream ``env`` belongs to for ``handler``, or None for a keyless message."""
    if env.order is None:
        return None
    return Stream(handler.consumer, env.source, env.topic, env.order.key)


def _position(order: Order) -> Position:
    return Position(order.epoch, order.sequence)


def _message(env: Envelope, attempt: int) -> Message:
    return Message(
        id=env.id,
        topic=env.topic,
        data=env.data,
        headers=env.headers,
        key=env.key,
        sequence=env.sequence,
        source=env.source,
        time=env.time,
        attempt=attempt,
        epoch=env.epoch,
        delivery_count=env.delivery_count,
    )


@tracing.fails
def _failure(handler: Handler, exc: Exception, attempt: int) -> tuple[str, float | None]:
    """The status after ``attempt`` failed with ``exc``, and in how many seconds to retry."""
    conf = get_settings()
    limit = handler.max_attempts or conf.inbox_max_attempts
    if isinstance(exc, DoNotRetry) or attempt >= limit:
        return Status.DEAD, None
    if isinstance(exc, RetryAfter):
        delay = exc.seconds
    else:
        delay = backoff_seconds(attempt, conf.inbox_backoff_base, conf.inbox_backoff_max)
    return Status.FAILED, delay


def _due_in(seconds: float | None) -> Any:
    """The database's clock plus ``seconds``, as an expression for ``save()``."""
    return None if seconds is None else Now() + dt.timedelta(seconds=seconds)


def _describe(exc: BaseException) -> tuple[str, str]:
    """An exception's one-line error and traceback, as text the database stores (a message
    or a handler's error may quote values holding NUL)."""
    error = storable_text(f"{type(exc).__name__}: {exc}"[:2000])
    return error, storable_text("".join(tb.format_exception(exc))[-20000:])


# -- entry points ---------------------------------------------------------------------


def process_delivery(
    body: bytes | str,
    properties: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
    *,
    using: str | None = None,
) -> dict[str, Outcome]:
    """Handle one broker delivery for every consumer of its topic; return each outcome.

    When it returns, the message is durable in the inbox and may be acknowledged: handled,
    or stored ``rejected`` with its reason and raw body when its content is bad, including
    content that the checks let through and the database or the inbox's own code then
    failed on. Only errors of the database itself propagate (it is down, or not migrated):
    the caller must then not acknowledge.
    """
    conf = get_settings()
    alias = _alias(using)
    delivery: Delivery = (raw_bytes(body), properties or {}, headers)
    try:
        return _process(alias, delivery)
    except Exception as exc:
        if not blames_content(exc):
            raise
        logger.exception("inbox: a delivery failed the inbox itself; storing it rejected")
        _reject(alias, delivery, f"the inbox failed on this message: {_describe(exc)[0]}")
        return {conf.service: Outcome.REJECTED}


def _process(alias: str, delivery: Delivery) -> dict[str, Outcome]:
    conf = get_settings()
    raw, properties, headers = delivery
    try:
        envelope = parse(raw, properties, headers, max_bytes=conf.max_body_bytes)
    except InvalidMessage as exc:
        _reject(alias, delivery, str(exc))
        return {conf.service: Outcome.REJECTED}
    handlers = registry.for_topic(envelope.topic)
    if not handlers:
        if conf.unknown_topic == "ignore":
            logger.info(
                "inbox: no handler for topic %r; message %s ignored by policy",
                envelope.topic,
                envelope.id,
                extra=fields(message_id=envelope.id, topic=envelope.topic, key=envelope.key),
            )
            return {conf.service: Outcome.IGNORED}
        reason = f"no handler for topic {envelope.topic!r} in service {conf.service!r}"
        _reject(alias, delivery, reason, envelope)
        return {conf.service: Outcome.REJECTED}
    raw = raw_bytes(delivery[0])
    return {h.consumer: handle(h, envelope, raw, using=alias) for h in handlers}


@tracing.rejects
def _reject(alias: str, delivery: Delivery, reason: str, envelope: Envelope | None = None) -> None:
    """Store ``delivery`` as rejected, under the service's own consumer name."""
    row = _rejection(delivery, reason, envelope)
    logger.warning(
        "inbox: rejected message %s (%s)",
        printable(row.message_id),
        reason,
        extra=fields(message_id=row.message_id, topic=row.topic, key=row.key),
    )
    with transaction.atomic(using=alias):
        _insert(alias, row)


def _rejection(delivery: Delivery, reason: str, envelope: Envelope | None) -> NewRow:
    """The rejected row of ``delivery``, made only of values the database stores.

    Keyed by the delivery's id when it is a usable one (the CloudEvent's, else the AMQP
    ``message_id``), so that its redeliveries are stored once; else by a key derived from the
    raw id and body, which no real id can equal. The raw body is kept whole, and the AMQP
    headers as storable JSON.
    """
    body, properties, headers = delivery
    raw = raw_bytes(body)
    service = get_settings().service
    reason = storable_text(reason)
    if envelope is not None:
        return NewRow.of(
            envelope, consumer=service, status=Status.REJECTED, raw=raw, attempts=0, error=reason
        )
    event_id, raw_id = _event_id(raw), properties.get("message_id")
    try:
        message_id = check_id(event_id if event_id is not None else raw_id)
    except LimitError:
        message_id = storage_key(raw_id, raw)
        if raw_id is not None:
            reason += f"; its message_id {storable_text(printable(raw_id, 1200))} is unusable"
    try:
        topic = check_text(properties.get("type"))
    except LimitError:
        topic = ""
    try:
        headers_json = json_text(storable(headers or {}))
    except LimitError:
        headers_json = "{}"
    return NewRow(
        consumer=service,
        message_id=message_id,
        status=Status.REJECTED,
        topic=topic,
        headers_json=headers_json,
        raw=raw,
        attempts=0,
        delivery_count=broker_delivery_count(headers),
        error=reason,
    )


def _event_id(raw: bytes) -> str | None:
    """The ``id`` of a CloudEvent body that failed its checks, when it has a usable one."""
    try:
        event = json_value(raw)
    except LimitError:
        return None
    if not isinstance(event, dict) or "specversion" not in event:
        return None
    try:
        return check_id(event.get("id"))
    except LimitError:
        return None


@tracing.handles
def handle(
    handler: Handler, env: Envelope, raw: bytes | None = None, *, using: str | None = None
) -> Outcome:
    """Deliver ``env`` to one handler, exactly once in effect."""
    alias = _alias(using)
    try:
        with transaction.atomic(using=alias):
            outcome = _handle_in_transaction(alias, handler, env, raw)
    except Exception as exc:
        outcome = _record_failure(alias, handler, env, raw, exc)
    stream = stream_of(handler, env)
    if outcome in _DRAIN_AFTER and stream is not None:
        drain_stream(handler, stream, using=alias)
    return outcome


#: Outcomes after which a stream's waiting messages may be next. WAITING is one of them: a
#: worker that died between committing a message and draining its successors leaves them
#: waiting, and the next arrival on the stream picks them up.
_DRAIN_AFTER = (Outcome.DONE, Outcome.DEAD, Outcome.VOID, Outcome.WAITING)

#: The status a keyed message is stored with when it does not run now.
_HELD = {
    Verdict.WAIT: (Status.WAITING, Outcome.WAITING),
    Verdict.STALE: (Status.STALE, Outcome.STALE),
}


@dataclass(frozen=True, slots=True)
class Step:
    """What one message does for one handler, decided before its row is written: the row to
    insert, and once it is inserted, whether the handler runs, the outcome, and the position
    its stream then settles (a keyed message that runs or is void)."""

    row: NewRow
    outcome: Outcome
    runs: bool = False
    settles: Position | None = None


def decide(handler: Handler, env: Envelope, raw: bytes | None, last: Position | None) -> Step:
    """The step of ``env`` for ``handler``, its stream's progress standing at ``last`` (None
    for a keyless message): the one place that turns :func:`inbox.ordering.judge`'s verdict
    into a row and an outcome, for a message alone and for a batch alike."""
    consumer = handler.consumer
    stream = stream_of(handler, env)
    if stream is not None and env.order is not None and last is not None:
        position = _position(env.order)
        verdict = ordering.judge(last, position)
        if verdict in _HELD:
            status, outcome = _HELD[verdict]
            error = ""
            if verdict is Verdict.STALE:
                error = _stale_reason(last, stream, position)
            row = NewRow.of(env, consumer=consumer, status=status, raw=raw, attempts=0, error=error)
            return Step(row, outcome)
        if env.voids is not None:
            row = NewRow.of(env, consumer=consumer, status=Status.VOID)
            return Step(row, Outcome.VOID, settles=position)
        row = NewRow.of(env, consumer=consumer, status=Status.DONE)
        return Step(row, Outcome.DONE, runs=True, settles=position)
    return Step(NewRow.of(env, consumer=consumer, status=Status.DONE), Outcome.DONE, runs=True)


@tracing.handles_in_batch
def _handle_in_transaction(
    alias: str,
    handler: Handler,
    env: Envelope,
    raw: bytes | None,
    planned: tuple[Step, bool] | None = None,
) -> Outcome:
    """Record ``env`` for ``handler`` and run it, inside the caller's transaction.

    A batch passes what it did already, ``planned``: the message's step, and whether its row
    was inserted (False: it was there, a duplicate); the batch settles its streams itself
    (:func:`process_batch`). Alone, this locks the stream's progress, decides, inserts and
    settles. A handler's exception propagates: the caller rolls back and records the failure.
    """
    stream = stream_of(handler, env)
    if planned is None:
        last = ordering.lock(alias, stream) if stream is not None else None
        step = decide(handler, env, raw, last)
        inserted = _insert(alias, step.row)
    else:
        step, inserted = planned
    if not inserted:
        return Outcome.DUPLICATE
    if step.runs:
        handler.func(_message(env, 1))
    if planned is None and stream is not None and step.settles is not None:
        ordering.settle(alias, stream, step.settles)
    return step.outcome


def _stale_reason(last: Position, stream: Stream, position: Position) -> str:
    return (
        f"stale: position {position.epoch}.{position.sequence} of "
        f"{stream.source}:{stream.topic}/{stream.key} is at or before the settled "
        f"{last.epoch}.{last.sequence}; not run (replay it to run it)"
    )


@tracing.handles_batch
def process_batch(deliveries: list[Delivery], *, using: str | None = None) -> None:
    """Handle several deliveries in one transaction: one commit instead of one each.

    Deliveries that cannot be read, or that no handler takes, are stored rejected one by one
    first; the rest share the transaction. Optimistic: if anything in it raises (a handler
    fails, two workers' batches deadlock), it rolls back and every delivery is then handled
    on its own by :func:`process_delivery`, which isolates failures. So the outcome per
    message is the same as one at a time; only the number of commits differs. Handlers'
    side effects outside the database may therefore run more than once, as they may on any
    redelivery.
    """
    conf = get_settings()
    alias = _alias(using)
    parsed: list[tuple[Delivery, Envelope, list[Handler]]] = []
    for body, properties, headers in deliveries:
        delivery: Delivery = (raw_bytes(body), properties, headers)
        try:
            env = parse(delivery[0], properties, headers, max_bytes=conf.max_body_bytes)
        except InvalidMessage:
            env = None
        handlers = registry.for_topic(env.topic) if env is not None else []
        if env is None or not handlers:
            process_delivery(*delivery, using=alias)
        else:
            parsed.append((delivery, env, handlers))
    drains: dict[Stream, Handler] = {}
    try:
        with transaction.atomic(using=alias):
            # Two batches sharing keys lock them in one order, so they never deadlock.
            held = ordering.lock_all(
                alias,
                (
                    stream
                    for _, env, handlers in parsed
                    for h in handlers
                    if (stream := stream_of(h, env)) is not None
                ),
            )
            # Every message's step decided first, in arrival order, against the progress
            # held in memory: a message that will run or is void settles its stream there as
            # if handled (a handler that fails rolls the whole batch back), so the next one
            # of its stream is judged after it, exactly as one at a time.
            plan: list[tuple[Handler, Envelope, bytes, Step]] = []
            for delivery, env, handlers in parsed:
                raw = raw_bytes(delivery[0])
                for handler in handlers:
                    stream = stream_of(handler, env)
                    step = decide(
                        handler, env, raw, held.last(stream) if stream is not None else None
                    )
                    if stream is not None and step.settles is not None:
                        held.settle(stream, step.settles)
                    plan.append((handler, env, raw, step))
            # Then every row in one round trip, before any handler runs, in the handlers'
            # transaction, exactly as one at a time.
            fresh = _insert_all(alias, [step.row for *_, step in plan])
            inserted = []
            for handler, env, _, step in plan:  # the first of a pair given twice runs, once
                inserted.append((handler.consumer, env.id) in fresh)
                fresh.discard((handler.consumer, env.id))
                if not inserted[-1] and step.settles is not None:
                    # Its row was there already (stored waiting or failed before, or by a
                    # concurrent batch): its stream did not move, and the steps after it
                    # were decided as if it had. One at a time decides them again.
                    raise _Misplanned(f"{handler.consumer} already had keyed {env.id}")
            for (handler, env, raw, step), was_inserted in zip(plan, inserted, strict=True):
                outcome = _handle_in_transaction(alias, handler, env, raw, (step, was_inserted))
                stream = stream_of(handler, env)
                if outcome in _DRAIN_AFTER and stream is not None:
                    drains[stream] = handler
            held.write()
    except Exception as exc:
        logger.debug(
            "inbox: batch of %d rolled back (%s); handling one at a time", len(parsed), exc
        )
        for delivery, _, _ in parsed:
            process_delivery(*delivery, using=alias)
        return
    # One query says which streams have anything waiting; only those are drained.
    for stream in sorted(ordering.with_waiting(alias, drains)):
        drain_stream(drains[stream], stream, using=alias)


class _Misplanned(Exception):
    """Raised inside a batch when a keyed message that was to move its stream turns out to be
    a duplicate: the batch rolls back and its deliveries are handled one at a time."""


def _record_failure(
    alias: str, handler: Handler, env: Envelope, raw: bytes | None, exc: Exception
) -> Outcome:
    status, next_at = _failure(handler, exc, 1)
    error, trace = _describe(exc)
    log = logger.error if status == Status.DEAD else logger.warning
    log(
        "inbox: %s failed on %s %s (attempt 1): %s",
        handler.consumer,
        env.topic,
        env.id,
        error,
        extra=fields(
            message_id=env.id, topic=env.topic, key=env.key, consumer=handler.consumer, attempt=1
        ),
    )
    row = NewRow.of(
        env,
        consumer=handler.consumer,
        status=status,
        raw=raw,
        attempts=1,
        error=error,
        trace=trace,
        retry_in=next_at,
    )
    with transaction.atomic(using=alias):
        if not _insert(alias, row):
            # A concurrent delivery got there first; leave its (possibly processed) row alone.
            return Outcome.DUPLICATE
        # Dead at its first attempt while its stream's next: the stream moves on.
        stream = stream_of(handler, env)
        if (
            status == Status.DEAD
            and stream is not None
            and env.order is not None
            and ordering.is_next(alias, stream, _position(env.order))
        ):
            ordering.settle(alias, stream, _position(env.order))
    return Outcome.DEAD if status == Status.DEAD else Outcome.FAILED


def _row_message(row: InboxMessage, attempt: int) -> Message:
    """The message a stored (waiting or failed) row hands its handler."""
    return Message(
        id=row.message_id,
        topic=row.topic,
        data=row.payload,
        headers=row.headers or {},
        key=row.key,
        sequence=row.sequence,
        source=row.source,
        attempt=attempt,
        epoch=row.epoch or 0,
        delivery_count=row.delivery_count,
    )


@tracing.handles_stored
def _run_stored(alias: str, handler: Handler, row: InboxMessage) -> Outcome:
    """Run a stored (waiting or failed) row's handler inside the caller's transaction.

    The row is locked by the caller, so no other worker can run it, and so is its stream's
    progress when it has one; the handler runs in a savepoint so that its failure is
    recorded in the same transaction. A waiting void announcement settles without a handler.
    """
    stream = ordering.stream_of_row(row)
    if row.voids is not None:
        row.status = Status.VOID
        row.save(using=alias, update_fields=["status"])
        if stream is not None:
            ordering.settle(alias, stream, ordering.position_of_row(row))
        return Outcome.VOID
    attempt = row.attempts + 1
    try:
        with transaction.atomic(using=alias):  # a savepoint: the handler's writes only
            handler.func(_row_message(row, attempt))
    except Exception as exc:
        status, next_at = _failure(handler, exc, attempt)
        row.last_error, row.traceback = _describe(exc)
        row.status, row.attempts, row.next_attempt_at = status, attempt, _due_in(next_at)
        row.save(
            using=alias,
            update_fields=["status", "attempts", "next_attempt_at", "last_error", "traceback"],
        )
        about = fields(
            message_id=row.message_id,
            topic=row.topic,
            key=row.key,
            consumer=handler.consumer,
            attempt=attempt,
        )
        if status != Status.DEAD:
            logger.warning(
                "inbox: %s failed on %s again (attempt %d): %s",
                handler.consumer,
                row.message_id,
                attempt,
                row.last_error,
                extra=about,
            )
            return Outcome.FAILED
        logger.error(
            "inbox: %s gave up on %s after %d attempts: %s",
            handler.consumer,
            row.message_id,
            attempt,
            row.last_error,
            extra=about,
        )
        outcome = Outcome.DEAD
    else:
        row.status, row.attempts, row.processed_at = Status.DONE, attempt, Now()
        row.next_attempt_at = None
        row.raw_body = None
        row.save(
            using=alias,
            update_fields=["status", "attempts", "processed_at", "next_attempt_at", "raw_body"],
        )
        outcome = Outcome.DONE
    if stream is not None:
        ordering.settle(alias, stream, ordering.position_of_row(row))
    return outcome


#: Waiting rows one drain hands on before it returns (see :func:`drain_stream`).
DRAIN_STEP = 100


def drain_stream(
    handler: Handler,
    stream: Stream,
    *,
    using: str | None = None,
    force_after: float | None = None,
    limit: int = DRAIN_STEP,
) -> int:
    """Handle the waiting messages of one stream that are now next in sequence, at most
    ``limit`` (:data:`DRAIN_STEP`) of them: the worker's consumer thread must get back to its
    broker connection, and the rest are handed on by the next sweep (``INBOX_SWEEP_INTERVAL``).

    With ``force_after``, a waiting head older than that many seconds is handled even though
    its predecessor never arrived and was never announced void (the producer vanished, or
    published before this consumer existed): the last resort. Returns how many rows settled.
    """
    alias = _alias(using)
    settled = 0
    while settled < limit:
        with transaction.atomic(using=alias):
            last = ordering.lock(alias, stream)
            row = ordering.waiting_head(alias, stream)
            if row is None:
                return settled
            position = ordering.position_of_row(row)
            verdict = ordering.judge(last, position)
            if verdict is Verdict.STALE:
                row.status = Status.STALE
                row.last_error = _stale_reason(last, stream, position)
                row.save(using=alias, update_fields=["status", "last_error"])
                settled += 1
                continue
            if verdict is Verdict.WAIT and (dead := ordering.dead_next(alias, stream, last)):
                ordering.settle(alias, stream, ordering.position_of_row(dead))
                settled += 1
                continue
            if verdict is Verdict.WAIT:
                age = _age_seconds(alias, row)
                if force_after is None or age < force_after:
                    return settled
                logger.warning(
                    "inbox: %s skips a gap in %s:%s/%s: waited %.0fs after %d.%d, handling %d.%d",
                    stream.consumer,
                    stream.source,
                    stream.topic,
                    stream.key,
                    age,
                    last.epoch,
                    last.sequence,
                    position.epoch,
                    position.sequence,
                    extra=fields(
                        message_id=row.message_id,
                        topic=stream.topic,
                        key=stream.key,
                        consumer=stream.consumer,
                    ),
                )
            outcome = _run_stored(alias, handler, row)
        settled += 1
        if outcome not in (Outcome.DONE, Outcome.DEAD, Outcome.VOID):
            return settled
    return settled


def _age_seconds(alias: str, row: InboxMessage) -> float:
    """How long ``row`` has been stored, on the database's clock."""
    age = (
        InboxMessage.objects.using(alias)
        .filter(pk=row.pk)
        .annotate(age=Now() - F("received_at"))
        .values_list("age", flat=True)
        .first()
    )
    return age.total_seconds() if isinstance(age, dt.timedelta) else 0.0


def retry_due(*, using: str | None = None, limit: int = 500) -> int:
    """One step of the retry sweep: retry this service's failed rows that are due, and hand
    on its waiting streams; at most ``limit`` of each, so that every step is bounded.

    Only this process's consumers are selected, in SQL: rows of a renamed handler, or of
    another service sharing the database, never fill the step. Failed rows go oldest due
    first, on the database's clock; waiting streams are walked in (consumer, source, topic,
    key) order from where the previous step stopped, so every stream gets its turn however
    many there are. Returns how many rows settled.
    """
    conf = get_settings()
    alias = _alias(using)
    handlers = {h.consumer: h for h in registry.all()}
    if not handlers:
        return 0
    settled = 0
    due = (
        InboxMessage.objects.using(alias)
        .filter(status=Status.FAILED, consumer__in=handlers, next_attempt_at__lte=Now())
        .order_by("next_attempt_at", "id")
        .values_list("id", "consumer")[:limit]
    )
    for row_id, consumer in list(due):
        settled += retry_row(handlers[consumer], row_id, using=alias)
    for stream in _waiting_streams(alias, list(handlers), limit=limit):
        settled += drain_stream(
            handlers[stream.consumer],
            stream,
            using=alias,
            force_after=conf.order_wait_seconds,
        )
    return settled


#: Where each database's waiting-stream sweep stopped last (per process): the next step
#: starts after it, and starts over once it reached the end.
_sweep_after: dict[str, Stream] = {}


def _waiting_streams(alias: str, consumers: list[str], *, limit: int) -> list[Stream]:
    """The next ``limit`` streams with waiting rows of ``consumers``, after the last sweep's."""
    rows = InboxMessage.objects.using(alias).filter(
        status=Status.WAITING, consumer__in=consumers, key__isnull=False
    )
    after = _sweep_after.get(alias)
    if after is not None:
        rows = rows.filter(_stream_after(after))
    streams = [
        Stream(consumer, source, topic, key or "")
        for consumer, source, topic, key in rows.order_by("consumer", "source", "topic", "key")
        .values_list("consumer", "source", "topic", "key")
        .distinct()[:limit]
    ]
    if len(streams) < limit:
        _sweep_after.pop(alias, None)
    else:
        _sweep_after[alias] = streams[-1]
    return streams


def _stream_after(stream: Stream) -> Q:
    """Rows whose (consumer, source, topic, key) sorts after ``stream``'s."""
    fields = ("consumer", "source", "topic", "key")
    values = (stream.consumer, stream.source, stream.topic, stream.key)
    after = Q()
    for i, field in enumerate(fields):
        same = {f: v for f, v in zip(fields[:i], values[:i], strict=True)}
        after |= Q(**same, **{f"{field}__gt": values[i]})
    return after


def retry_row(
    handler: Handler, row_id: int, *, using: str | None = None, limit: int = 1 + DRAIN_STEP
) -> int:
    """Retry one failed row now if no other worker holds it, then hand on the waiting rows
    of its stream: at most ``limit`` handlers in all. Returns how many rows settled."""
    alias = _alias(using)
    with transaction.atomic(using=alias):
        row = (
            InboxMessage.objects.using(alias)
            .select_for_update(skip_locked=True)
            .filter(id=row_id, status=Status.FAILED)
            .first()
        )
        if row is None:
            return 0
        stream = ordering.stream_of_row(row)
        if stream is not None:
            last = ordering.lock(alias, stream)
            # A failed row was its stream's next when it failed; only a restarted epoch
            # can put something before it again, and then it waits its turn.
            if ordering.judge(last, ordering.position_of_row(row)) is Verdict.WAIT:
                row.status = Status.WAITING
                row.save(using=alias, update_fields=["status"])
                return 0
        outcome = _run_stored(alias, handler, row)
    if stream is not None and outcome in _DRAIN_AFTER and limit > 1:
        return 1 + drain_stream(handler, stream, using=alias, limit=limit - 1)
    return 1
