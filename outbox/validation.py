"""What ``publish()`` refuses, and how it says so: every argument checked against what the
database stores and AMQP carries (the shared rules of :mod:`inbox_outbox.limits`), so that a
bad value raises :class:`~outbox.exceptions.PublishError` inside ``publish()`` itself, never
a database error at a later, unrelated statement or at COMMIT.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from inbox_outbox import limits

from .exceptions import PublishError

#: Strict (no NaN or infinities), and handles dates, decimals and UUIDs. Stateless, so one
#: instance serves every thread.
_ENCODER = DjangoJSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _shown(value: object) -> str:
    return limits.printable(value, 80)


def topic(value: object) -> str:
    """A topic is an AMQP routing key and a text column: at most 255 characters and 255
    bytes of UTF-8, no NUL, valid Unicode."""
    if not isinstance(value, str) or not value.strip():
        raise PublishError(f"topic must be a non-empty string, got {_shown(value)}.")
    try:
        return limits.check_text(value, max_bytes=limits.SHORTSTR_BYTES)
    except limits.LimitError as exc:
        raise PublishError(
            f"The topic {_shown(value)} {exc} (a topic must be at most 255 characters "
            "and 255 bytes of UTF-8)."
        ) from None


def text(name: str, value: object) -> str | None:
    """An ordering key or dedup key: ``None``, or a non-empty string a text column holds."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise PublishError(
            f"{name} must be a non-empty string of at most 255 characters, got {_shown(value)}."
        )
    try:
        return limits.check_text(value)
    except limits.LimitError as exc:
        raise PublishError(f"The {name} {_shown(value)} {exc}.") from None


def headers(value: object) -> dict[str, Any]:
    """A copy of the headers, once AMQP can carry them as a field table: string names of at
    most 255 bytes of UTF-8, integers within 64 bits."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PublishError(f"headers must be a dict, got {type(value).__name__}.")
    try:
        limits.check_amqp_table(value)
    except limits.LimitError as exc:
        raise PublishError(f"The header table {exc}; AMQP cannot carry it.") from None
    return dict(value)


def json_text(value: Any, *, what: str, topic: str) -> str:
    """``value`` as strict JSON that PostgreSQL's jsonb stores and every consumer decodes."""
    try:
        return limits.json_text(value, encoder=_ENCODER)
    except limits.LimitError as exc:
        raise PublishError(
            f"The {what} for topic {_shown(topic)} is not JSON-serialisable: it {exc}. Pass "
            "plain dicts, lists, strings, finite numbers, booleans, None, or values Django's "
            "DjangoJSONEncoder handles (dates, decimals, UUIDs), with no NUL character, at "
            f"most {limits.JSON_DEPTH} levels deep."
        ) from None


def ttl_seconds(ttl: object) -> float | None:
    """The TTL in seconds: positive, finite, and at most ten years (RabbitMQ refuses a
    longer per-message expiration with a channel error)."""
    if ttl is None:
        return None
    if isinstance(ttl, dt.timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        try:
            seconds = float(ttl)
        except OverflowError:
            seconds = math.inf
    else:
        raise PublishError(
            f"ttl must be a timedelta or a number of seconds, got {type(ttl).__name__} "
            f"{_shown(ttl)}."
        )
    if math.isnan(seconds) or seconds <= 0:
        raise PublishError(f"ttl must be positive, got {_shown(ttl)}.")
    if seconds > limits.MAX_TTL_SECONDS:
        raise PublishError(
            f"ttl must be at most {limits.MAX_TTL_SECONDS} seconds (ten years; RabbitMQ "
            f"refuses a longer message expiration), got {_shown(ttl)}."
        )
    return seconds


def usable_transaction(connection: Any, alias: str) -> None:
    """Refuse to write into a transaction the database has already failed: every statement
    in it would fail, and with held inserts the error would surface at a later, unrelated
    statement or at COMMIT instead of here."""
    if connection.in_atomic_block and connection.needs_rollback:
        failed = True
    else:
        failed = _database_says_failed(connection)
    if failed:
        raise PublishError(
            f"publish() ran in a transaction on database {alias!r} that an earlier database "
            "error already broke (PostgreSQL ignores every statement until it rolls back). "
            "Wrap the statement that may fail in its own `transaction.atomic()` block (a "
            "savepoint), or roll back before publishing."
        )


#: libpq's ``PQTRANS_INERROR`` (psycopg's ``TransactionStatus.INERROR``, psycopg2's
#: ``TRANSACTION_STATUS_INERROR``): the open transaction has failed.
_INERROR = 3


def _database_says_failed(connection: Any) -> bool:
    """Whether the driver reports the open transaction as failed: known without a round
    trip (libpq keeps the status the server sent with its last reply)."""
    if connection.vendor != "postgresql" or connection.connection is None:
        return False
    raw = connection.connection
    info = getattr(raw, "info", None)
    status = getattr(info, "transaction_status", None)
    if status is None:  # psycopg2
        get_status = getattr(raw, "get_transaction_status", None)
        status = get_status() if get_status is not None else None
    return bool(status == _INERROR)
