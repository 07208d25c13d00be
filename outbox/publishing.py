"""``publish()``: write an outbox row through the caller's transaction."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.models.base import ModelState
from django.utils import timezone
from uuid6 import uuid7

from inbox_outbox import tracing
from inbox_outbox.conf import get_settings

from . import sql, validation
from .exceptions import NotInTransaction, PayloadTooLarge
from .models import OutboxMessage, Status
from .session import Session, session_for

logger = logging.getLogger(__name__)


def _next_sequence(session: Session, vendor: str, topic: str, key: str) -> tuple[int, int]:
    """Increment the (topic, key) counter and return its (epoch, sequence); the row lock it
    takes lasts until commit."""
    session.execute(sql.next_sequence(vendor), [topic, key])
    epoch, sequence = session.cursor.fetchone()
    return int(epoch), int(sequence)


@tracing.creates
def publish(
    topic: str,
    payload: Any,
    *,
    key: str | None = None,
    headers: dict[str, Any] | None = None,
    dedup_key: str | None = None,
    ttl: dt.timedelta | float | None = None,
    delay: dt.timedelta | float | None = None,
    deliver_at: dt.datetime | None = None,
    expires_at: dt.datetime | None = None,
    using: str | None = None,
) -> OutboxMessage:
    """Record a message to publish once the surrounding transaction commits.

    The row is written through ``using``'s connection (by default the database
    router's choice for the outbox), inside whatever transaction is open there: if
    the caller rolls back, nothing is published. Messages sharing ``key`` within a
    topic are delivered in commit order. With ``dedup_key``, publishing the same
    business event twice returns the first message and writes nothing.

    With ``delay`` (seconds or a timedelta, from the database's clock when the row is
    written) or ``deliver_at`` (an aware datetime), the message is ``scheduled``: the relay
    sends it no earlier than that, on the database's clock, and ``outbox.cancel()`` can
    withdraw it until then. A ``ttl`` counts from the due time; ``expires_at`` (an aware
    datetime, not with ``ttl``) is an expiry stored as given and compared with the
    database's clock: the message is not sent from then on. A delayed keyed message
    takes its sequence now and holds its key back until it is sent: later messages of the
    key wait for it.
    """
    conf = get_settings()
    topic = validation.topic(topic)
    key = validation.text("key", key)
    dedup_key = validation.text("dedup_key", dedup_key)
    headers = validation.headers(headers)
    ttl_seconds = validation.ttl_seconds(ttl)
    due = validation.due(delay, deliver_at, ttl_seconds)
    expiry_at = validation.expires_at(expires_at, ttl_seconds=ttl_seconds)
    alias = using or router.db_for_write(OutboxMessage)
    connection = connections[alias]
    if conf.require_atomic and not connection.in_atomic_block:
        raise NotInTransaction(
            f"publish({topic!r}) ran outside transaction.atomic() on database {alias!r}, and "
            'INBOX_OUTBOX["REQUIRE_ATOMIC"] is on. Wrap the business writes and the publish '
            "in one `with transaction.atomic():` block."
        )
    validation.usable_transaction(connection, alias)
    payload_json = validation.json_text(payload, what="payload", topic=topic)
    size = len(payload_json.encode())
    if size > conf.max_payload_bytes:
        raise PayloadTooLarge(
            f"The payload for topic {topic!r} is {size} bytes encoded, over the limit of "
            f'{conf.max_payload_bytes} (INBOX_OUTBOX["MAX_PAYLOAD_BYTES"]). Send a reference '
            "to the data (an id or URL) instead of the data itself, or raise the limit."
        )
    now = timezone.now()
    new = NewMessage(
        topic=topic,
        key=key,
        payload=payload,
        payload_json=payload_json,
        headers=headers,
        headers_json=(
            validation.json_text(headers, what="headers", topic=topic) if headers else None
        ),
        dedup_key=dedup_key,
        created_at=now,
        ttl_seconds=ttl_seconds,
        due=due,
        expiry_at=expiry_at,
    )
    if dedup_key is not None:
        return _insert_once(connection, alias, new)
    if key is not None and not connection.in_atomic_block:
        # The sequence and the row commit together, or a later sequence could commit first.
        with transaction.atomic(using=alias):
            return _insert(connection, alias, new)
    return _insert(connection, alias, new)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """What ``publish()`` validated, ready to be written as one outbox row."""

    topic: str
    key: str | None
    payload: Any
    payload_json: str
    headers: dict[str, Any]
    headers_json: str | None
    dedup_key: str | None
    created_at: dt.datetime
    #: The TTL; the database adds it to its own clock, as it sets ``available_at``.
    ttl_seconds: float | None
    #: When a delayed message falls due; ``None`` for one due now.
    due: validation.Due | None = None
    #: An expiry given as an instant (``publish(expires_at=...)``), stored as given.
    expiry_at: dt.datetime | None = None

    @property
    def available_at(self) -> dt.datetime:
        """The due time as this host estimates it (the stored one is on the database's
        clock, unless given as an instant)."""
        if self.due is None:
            return self.created_at
        if self.due.at is not None:
            return self.due.at
        return self.created_at + dt.timedelta(seconds=self.due.seconds or 0)

    @property
    def expires_at(self) -> dt.datetime | None:
        """The expiry as this host estimates it (the stored one is on the database's clock):
        the TTL after the due time, or the instant given."""
        if self.expiry_at is not None:
            return self.expiry_at
        if self.ttl_seconds is None:
            return None
        return self.available_at + dt.timedelta(seconds=self.ttl_seconds)

    def due_values(self, ops: Any) -> tuple[str | None, bool, Any, Any]:
        """How the insert gives the due time and the expiry (``sql.insert_message``'s
        ``due`` and ``expiry_at``), and their parameters."""
        if self.expiry_at is not None:
            kind, available_at, _ = self._due_and_ttl(ops)
            return kind, True, available_at, ops.adapt_datetimefield_value(self.expiry_at)
        kind, available_at, expires = self._due_and_ttl(ops)
        return kind, kind == sql.AT, available_at, expires

    def _due_and_ttl(self, ops: Any) -> tuple[str | None, Any, Any]:
        """The due time's kind and parameter, and the TTL's parameter (an instant when the
        due time is one, seconds from the database's clock otherwise)."""
        ttl = self.ttl_seconds
        if self.due is None:
            return None, None, ttl
        if self.due.at is not None:
            expires = self.due.expires_at
            return (
                sql.AT,
                ops.adapt_datetimefield_value(self.due.at),
                None if expires is None else ops.adapt_datetimefield_value(expires),
            )
        seconds = self.due.seconds
        assert seconds is not None
        return sql.DELAY, seconds, None if ttl is None else seconds + ttl


def _insert_once(connection: Any, alias: str, new: NewMessage) -> OutboxMessage:
    """Insert ``new`` unless a message with its dedup key exists; return the one that does."""
    existing = OutboxMessage.objects.using(alias).filter(dedup_key=new.dedup_key)
    with transaction.atomic(using=alias):
        first = existing.first()
        if first is not None:
            return first
        try:
            with transaction.atomic(using=alias):
                return _insert(connection, alias, new)
        except IntegrityError:
            first = existing.first()
            if first is None:
                raise
            return first


def _insert(connection: Any, alias: str, new: NewMessage) -> OutboxMessage:
    vendor = connection.vendor
    ops = connection.ops
    session = session_for(connection)
    epoch = sequence = None
    if new.key is not None:
        epoch, sequence = _next_sequence(session, vendor, new.topic, new.key)
    message_id = uuid7()
    now_db = ops.adapt_datetimefield_value(new.created_at)
    due, expiry_at, available_at, expires_at = new.due_values(ops)
    notify = vendor == "postgresql" and _nudge_due(connection)
    row = {
        "id": message_id if connection.features.has_native_uuid_field else message_id.hex,
        "topic": new.topic,
        "key": new.key,
        "sequence": sequence,
        "epoch": epoch,
        "payload": new.payload_json,
        "headers": new.headers_json,
        "dedup_key": new.dedup_key,
        "available_at": available_at,
        "created_at": now_db,
        "expires_at": expires_at,
    }
    absent = frozenset(c for c in sql.ABSENT_VALUES if row[c] is None)
    statement = sql.insert_message(
        vendor, notify=notify, absent=absent, due=due, expiry_at=expiry_at
    )
    values = [v for c, v in row.items() if c not in absent]
    if new.dedup_key is None:
        session.insert(statement, values)
    else:  # the unique constraint must answer now, inside publish()'s savepoint
        session.execute(statement, values)
    if notify:
        transaction.on_commit(_nudged, using=alias)
    elif vendor != "postgresql" and _nudge_due(connection):
        transaction.on_commit(_nudge_task, using=alias)
    return _instance(
        alias,
        id=message_id,
        topic=new.topic,
        key=new.key,
        sequence=sequence,
        epoch=epoch,
        payload=new.payload,
        headers=new.headers,
        dedup_key=new.dedup_key,
        status=Status.PENDING if new.due is None else Status.SCHEDULED,
        available_at=new.available_at,
        created_at=new.created_at,
        expires_at=new.expires_at,
    )


def _instance(alias: str, **values: Any) -> OutboxMessage:
    """The row just inserted, as a saved model instance.

    Built as Django builds unpickled instances (``__new__`` plus field values), skipping
    ``__init__``'s argument handling, which would cost more than the insert's Python side.
    """
    message = OutboxMessage.__new__(OutboxMessage)
    message.__dict__.update(
        attempts=0,
        lease_owner="",
        lease_until=None,
        sent_at=None,
        last_error="",
        voids=None,
        **values,
    )
    message._state = ModelState()
    message._state.adding = False
    message._state.db = alias
    return message


_last_nudge = 0.0
_nudge_lock = threading.Lock()


def _nudge_due(connection: Any) -> bool:
    """Whether this publish should nudge: on, not yet nudged in this transaction, and no
    nudge committed by this process in the last interval.

    PostgreSQL serializes the commits of transactions that NOTIFY, so one NOTIFY per
    transaction would cost more than the insert itself under load.
    """
    conf = get_settings()
    if not conf.nudge or time.monotonic() - _last_nudge < conf.nudge_interval:
        return False
    # Our commit hook is in the list while this transaction (or a savepoint of it that
    # was not rolled back, which would also have discarded the NOTIFY) carries a nudge.
    # Checked last: the scan is the only part whose cost grows with the transaction.
    return not (
        connection.in_atomic_block
        and any(e[1] in (_nudged, _nudge_task) for e in connection.run_on_commit)
    )


def _nudged() -> None:
    """Called on commit of a transaction that carried a nudge (never on rollback)."""
    global _last_nudge
    _last_nudge = time.monotonic()


def _nudge_task() -> None:
    """Wake a Celery relay after commit (for databases without NOTIFY)."""
    with _nudge_lock:
        if time.monotonic() - _last_nudge < get_settings().nudge_interval:
            return
        _nudged()
    from .tasks import relay

    try:
        relay.apply_async(ignore_result=True)
    except Exception:  # the beat schedule will pick the message up; never fail a commit hook
        logger.warning("outbox: could not nudge the relay", exc_info=True)
