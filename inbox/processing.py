"""Turning deliveries into exactly-once effects.

For each handler of a message, one transaction inserts the inbox row
(``ON CONFLICT DO NOTHING`` on (consumer, message id)) and runs the handler. A
duplicate finds the row already there and does nothing; a concurrent duplicate
waits on the unique index until the first commits. Keyed messages first lock the
consumer's progress row for their (topic, key): a message whose predecessor has
not been handled yet is stored as *waiting* and handled when the gap closes.

Every path ends with the message durable in the inbox (processed, waiting, failed,
dead or rejected), so the caller may acknowledge the broker afterwards.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import traceback as tb
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, router, transaction
from django.utils import timezone

from inbox_outbox.backoff import backoff_seconds
from inbox_outbox.conf import get_settings

from . import sql
from .envelope import Envelope, body_id, parse
from .exceptions import DoNotRetry, InvalidMessage, RetryAfter
from .message import Message
from .models import InboxMessage, KeyProgress, Status
from .registry import Handler, registry

logger = logging.getLogger(__name__)


class Outcome(enum.Enum):
    DONE = "done"
    DUPLICATE = "duplicate"
    WAITING = "waiting"
    FAILED = "failed"
    DEAD = "dead"
    REJECTED = "rejected"
    IGNORED = "ignored"


def _alias(using: str | None) -> str:
    return using or router.db_for_write(InboxMessage)


def _insert(
    alias: str,
    *,
    consumer: str,
    message_id: str,
    status: str,
    envelope: Envelope | None,
    raw: bytes | None = None,
    attempts: int = 1,
    error: str = "",
    trace: str = "",
    next_attempt_at: dt.datetime | None = None,
    topic: str = "",
) -> bool:
    """Insert an inbox row unless (consumer, message id) exists; return whether it did."""
    connection = connections[alias]
    ops = connection.ops
    now = ops.adapt_datetimefield_value(timezone.now())
    env = envelope
    params = [
        consumer,
        message_id[:200],
        (env.topic if env else topic)[:255],
        env.key if env else None,
        env.sequence if env else None,
        json.dumps(env.data, cls=DjangoJSONEncoder) if env else "null",
        json.dumps(env.headers if env else {}, cls=DjangoJSONEncoder),
        raw,
        status,
        attempts,
        now,
        now if status == Status.DONE else None,
        ops.adapt_datetimefield_value(next_attempt_at) if next_attempt_at else None,
        error,
        trace,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql.insert_row_unless_seen(connection.vendor), params)
        return cursor.fetchone() is not None


def _lock_progress(alias: str, consumer: str, topic: str, key: str) -> int:
    """Lock the (consumer, topic, key) progress row until commit; return its last sequence."""
    connection = connections[alias]
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql.LOCK_PROGRESS, [consumer, topic, key, now])
        return int(cursor.fetchone()[0])


def _lock_progress_rows(alias: str, streams: list[tuple[str, str, str]]) -> None:
    """Lock the progress rows of ``streams`` (consumer, topic, key) in the order given."""
    if not streams:
        return
    connection = connections[alias]
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    params = [value for stream in streams for value in (*stream, now)]
    with connection.cursor() as cursor:
        cursor.execute(sql.lock_progress_rows(len(streams)), params)


def _advance(alias: str, consumer: str, topic: str, key: str, sequence: int) -> None:
    KeyProgress.objects.using(alias).filter(
        consumer=consumer, topic=topic, key=key, last_sequence__lt=sequence
    ).update(last_sequence=sequence)


def _is_keyed(topic: str, key: str | None, sequence: int | None) -> bool:
    return key is not None and sequence is not None


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
    )


def _failure(handler: Handler, exc: Exception, attempt: int) -> tuple[str, dt.datetime | None]:
    """The status and next attempt time after ``attempt`` failed with ``exc``."""
    conf = get_settings()
    limit = handler.max_attempts or conf.inbox_max_attempts
    if isinstance(exc, DoNotRetry) or attempt >= limit:
        return Status.DEAD, None
    if isinstance(exc, RetryAfter):
        delay = exc.seconds
    else:
        delay = backoff_seconds(attempt, conf.inbox_backoff_base, conf.inbox_backoff_max)
    return Status.FAILED, timezone.now() + dt.timedelta(seconds=delay)


def _describe(exc: Exception) -> tuple[str, str]:
    return f"{type(exc).__name__}: {exc}"[:2000], "".join(tb.format_exception(exc))[-20000:]


# -- entry points ---------------------------------------------------------------------


def process_delivery(
    body: bytes | str,
    properties: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
    *,
    using: str | None = None,
) -> dict[str, Outcome]:
    """Handle one broker delivery for every consumer of its topic; return each outcome.

    When it returns, the message is durable in the inbox and may be acknowledged.
    Database errors propagate: the caller must then not acknowledge.
    """
    conf = get_settings()
    alias = _alias(using)
    properties = properties or {}
    raw = body.encode() if isinstance(body, str) else bytes(body)
    try:
        envelope = parse(raw, properties, headers, max_bytes=conf.max_body_bytes)
    except InvalidMessage as exc:
        message_id = str(properties.get("message_id") or body_id(raw))
        _reject(alias, message_id, str(properties.get("type") or ""), raw, str(exc))
        return {conf.service: Outcome.REJECTED}
    handlers = registry.for_topic(envelope.topic)
    if not handlers:
        if conf.unknown_topic == "ignore":
            logger.info(
                "inbox: no handler for topic %r; message %s ignored by policy",
                envelope.topic,
                envelope.id,
            )
            return {conf.service: Outcome.IGNORED}
        _reject(
            alias,
            envelope.id,
            envelope.topic,
            raw,
            f"no handler for topic {envelope.topic!r} in service {conf.service!r}",
            envelope,
        )
        return {conf.service: Outcome.REJECTED}
    return {h.consumer: handle(h, envelope, raw, using=alias) for h in handlers}


def _reject(
    alias: str,
    message_id: str,
    topic: str,
    raw: bytes,
    reason: str,
    envelope: Envelope | None = None,
) -> None:
    logger.warning("inbox: rejected message %s (%s)", message_id, reason)
    with transaction.atomic(using=alias):
        _insert(
            alias,
            consumer=get_settings().service,
            message_id=message_id,
            status=Status.REJECTED,
            envelope=envelope,
            raw=raw,
            attempts=0,
            error=reason,
            topic=topic,
        )


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
    if outcome in _DRAIN_AFTER and _is_keyed(env.topic, env.key, env.sequence):
        drain_key(handler, env.topic, env.key, using=alias)  # type: ignore[arg-type]
    return outcome


#: Outcomes after which a key's waiting messages may be next. WAITING is one of them: a
#: worker that died between committing a message and draining its successors leaves them
#: waiting, and the next arrival on the key picks them up.
_DRAIN_AFTER = (Outcome.DONE, Outcome.DEAD, Outcome.WAITING)


def _handle_in_transaction(
    alias: str, handler: Handler, env: Envelope, raw: bytes | None
) -> Outcome:
    """Record ``env`` for ``handler`` and run it, inside the caller's transaction.

    A handler's exception propagates: the caller rolls back and records the failure.
    """
    consumer = handler.consumer
    keyed = _is_keyed(env.topic, env.key, env.sequence)
    if keyed:
        assert env.key is not None and env.sequence is not None
        last = _lock_progress(alias, consumer, env.topic, env.key)
        if env.sequence > last + 1:
            status, attempts = Status.WAITING, 0
            _insert(
                alias,
                consumer=consumer,
                message_id=env.id,
                status=status,
                envelope=env,
                raw=raw,
                attempts=attempts,
            )
            return Outcome.WAITING
    if not _insert(alias, consumer=consumer, message_id=env.id, status=Status.DONE, envelope=env):
        return Outcome.DUPLICATE
    handler.func(_message(env, 1))
    if keyed:
        _advance(alias, consumer, env.topic, env.key, env.sequence)  # type: ignore[arg-type]
    return Outcome.DONE


class _NotBatchable(Exception):
    """A delivery in the batch needs the one-at-a-time path (rejected or unknown topic)."""


def process_batch(
    deliveries: list[tuple[bytes | str, dict[str, Any], dict[str, Any] | None]],
    *,
    using: str | None = None,
) -> None:
    """Handle several deliveries in one transaction: one commit instead of one each.

    Optimistic: if anything in the batch raises (a handler fails, a message is malformed,
    two workers' batches deadlock), the whole transaction rolls back and every delivery is
    then handled on its own by :func:`process_delivery`, which isolates failures. So the
    outcome per message is the same as one at a time; only the number of commits differs.
    Handlers' side effects outside the database may therefore run more than once, as they
    may on any redelivery.
    """
    conf = get_settings()
    alias = _alias(using)
    drains: dict[tuple[str, str, str], Handler] = {}
    try:
        with transaction.atomic(using=alias):
            parsed = []
            for body, properties, headers in deliveries:
                raw = body.encode() if isinstance(body, str) else bytes(body)
                try:
                    env = parse(raw, properties, headers, max_bytes=conf.max_body_bytes)
                except InvalidMessage as exc:
                    raise _NotBatchable from exc
                handlers = registry.for_topic(env.topic)
                if not handlers:
                    raise _NotBatchable
                parsed.append((env, raw, handlers))
            # Two batches sharing keys lock them in one order, so they never deadlock.
            _lock_progress_rows(
                alias,
                sorted(
                    {
                        (h.consumer, env.topic, env.key)
                        for env, _, handlers in parsed
                        if env.key is not None and env.sequence is not None
                        for h in handlers
                    }
                ),
            )
            for env, raw, handlers in parsed:
                for handler in handlers:
                    outcome = _handle_in_transaction(alias, handler, env, raw)
                    if outcome in _DRAIN_AFTER and _is_keyed(env.topic, env.key, env.sequence):
                        drains[(handler.consumer, env.topic, env.key)] = handler  # type: ignore[index]
    except Exception as exc:
        if not isinstance(exc, _NotBatchable):
            logger.debug(
                "inbox: batch of %d rolled back (%s); handling one at a time", len(deliveries), exc
            )
        for body, properties, headers in deliveries:
            process_delivery(body, properties, headers, using=alias)
        return
    for (_, topic, key), handler in drains.items():
        drain_key(handler, topic, key, using=alias)


def _record_failure(
    alias: str, handler: Handler, env: Envelope, raw: bytes | None, exc: Exception
) -> Outcome:
    status, next_at = _failure(handler, exc, 1)
    error, trace = _describe(exc)
    log = logger.error if status == Status.DEAD else logger.warning
    log("inbox: %s failed on %s %s (attempt 1): %s", handler.consumer, env.topic, env.id, error)
    with transaction.atomic(using=alias):
        if not _insert(
            alias,
            consumer=handler.consumer,
            message_id=env.id,
            status=status,
            envelope=env,
            raw=raw,
            attempts=1,
            error=error,
            trace=trace,
            next_attempt_at=next_at,
        ):
            # A concurrent delivery got there first; leave its (possibly processed) row alone.
            return Outcome.DUPLICATE
        if status == Status.DEAD and _is_keyed(env.topic, env.key, env.sequence):
            _lock_progress(alias, handler.consumer, env.topic, env.key)  # type: ignore[arg-type]
            _advance(alias, handler.consumer, env.topic, env.key, env.sequence)  # type: ignore[arg-type]
    return Outcome.DEAD if status == Status.DEAD else Outcome.FAILED


def _stored_envelope(row: InboxMessage) -> Envelope:
    return Envelope(
        row.message_id, row.topic, row.payload, row.headers or {}, row.key, row.sequence, "", None
    )


def _run_stored(alias: str, handler: Handler, row: InboxMessage) -> Outcome:
    """Run a stored (waiting or failed) row's handler inside the caller's transaction.

    The row is locked by the caller, so no other worker can run it; the handler runs
    in a savepoint so that its failure is recorded in the same transaction.
    """
    attempt = row.attempts + 1
    keyed = _is_keyed(row.topic, row.key, row.sequence)
    try:
        with transaction.atomic(using=alias):  # a savepoint: the handler's writes only
            handler.func(_message(_stored_envelope(row), attempt))
    except Exception as exc:
        status, next_at = _failure(handler, exc, attempt)
        row.last_error, row.traceback = _describe(exc)
        row.status, row.attempts, row.next_attempt_at = status, attempt, next_at
        row.save(
            using=alias,
            update_fields=["status", "attempts", "next_attempt_at", "last_error", "traceback"],
        )
        if status == Status.DEAD:
            logger.error(
                "inbox: %s gave up on %s after %d attempts: %s",
                handler.consumer,
                row.message_id,
                attempt,
                row.last_error,
            )
            if keyed:
                _advance(alias, handler.consumer, row.topic, row.key, row.sequence)  # type: ignore[arg-type]
            return Outcome.DEAD
        return Outcome.FAILED
    row.status, row.attempts, row.processed_at = Status.DONE, attempt, timezone.now()
    row.next_attempt_at = None
    row.raw_body = None
    row.save(
        using=alias,
        update_fields=["status", "attempts", "processed_at", "next_attempt_at", "raw_body"],
    )
    if keyed:
        _advance(alias, handler.consumer, row.topic, row.key, row.sequence)  # type: ignore[arg-type]
    return Outcome.DONE


#: Waiting rows one drain hands on before it returns (see :func:`drain_key`).
DRAIN_STEP = 100


def drain_key(
    handler: Handler,
    topic: str,
    key: str,
    *,
    using: str | None = None,
    force_after: float | None = None,
) -> int:
    """Handle the waiting messages of one key that are now next in sequence, at most
    :data:`DRAIN_STEP` of them: the worker's consumer thread must get back to its broker
    connection, and the rest are handed on by the next sweep (``INBOX_SWEEP_INTERVAL``).

    With ``force_after``, a waiting head older than that many seconds is handled
    even though its predecessor never arrived (it expired, died upstream, or was
    published before this consumer existed). Returns how many rows were settled.
    """
    alias = _alias(using)
    consumer = handler.consumer
    settled = 0
    while settled < DRAIN_STEP:
        with transaction.atomic(using=alias):
            last = _lock_progress(alias, consumer, topic, key)
            row = (
                InboxMessage.objects.using(alias)
                .filter(consumer=consumer, topic=topic, key=key, status=Status.WAITING)
                .order_by("sequence")
                .select_for_update(skip_locked=True)
                .first()
            )
            if row is None or row.sequence is None:
                return settled
            if row.sequence > last + 1:
                age = (timezone.now() - row.received_at).total_seconds()
                if force_after is None or age < force_after:
                    return settled
                logger.warning(
                    "inbox: %s skips a gap in %s/%s: waited %.0fs for sequence %d, handling %d",
                    consumer,
                    topic,
                    key,
                    age,
                    last + 1,
                    row.sequence,
                )
            outcome = _run_stored(alias, handler, row)
        settled += 1
        if outcome not in (Outcome.DONE, Outcome.DEAD):
            return settled
    return settled


def retry_due(*, using: str | None = None, limit: int = 500) -> int:
    """Retry failed rows whose time has come and unblock stale waiting keys."""
    conf = get_settings()
    alias = _alias(using)
    now = timezone.now()
    settled = 0
    due = list(
        InboxMessage.objects.using(alias)
        .filter(status=Status.FAILED, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("id", "consumer")[:limit]
    )
    for row_id, consumer in due:
        handler = registry.for_consumer(consumer)
        if handler is None:
            continue  # a service without this handler shares the database; not ours to run
        settled += retry_row(handler, row_id, using=alias)
    waiting = (
        InboxMessage.objects.using(alias)
        .filter(status=Status.WAITING)
        .order_by()
        .values_list("consumer", "topic", "key")
        .distinct()[:limit]
    )
    for consumer, topic, key in waiting:
        handler = registry.for_consumer(consumer)
        if handler is not None and key is not None:
            settled += drain_key(
                handler, topic, key, using=alias, force_after=conf.order_wait_seconds
            )
    return settled


def retry_row(handler: Handler, row_id: int, *, using: str | None = None) -> int:
    """Retry one failed row now if no other worker holds it; return 1 if it ran."""
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
        keyed = _is_keyed(row.topic, row.key, row.sequence)
        if keyed:
            last = _lock_progress(alias, handler.consumer, row.topic, row.key)  # type: ignore[arg-type]
            if row.sequence > last + 1:  # type: ignore[operator]
                row.status = Status.WAITING
                row.save(using=alias, update_fields=["status"])
                return 0
        outcome = _run_stored(alias, handler, row)
    if keyed and outcome in (Outcome.DONE, Outcome.DEAD):
        drain_key(handler, row.topic, row.key, using=alias)  # type: ignore[arg-type]
    return 1
