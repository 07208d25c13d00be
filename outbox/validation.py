"""What ``publish()`` refuses, and how it says so: every argument checked against what the
database stores and AMQP carries (the shared rules of :mod:`inbox_outbox.limits`), so that a
bad value raises :class:`~outbox.exceptions.PublishError` inside ``publish()`` itself, never
a database error at a later, unrelated statement or at COMMIT.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
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
    seconds = _seconds("ttl", ttl)
    if math.isnan(seconds) or seconds <= 0:
        raise PublishError(f"ttl must be positive, got {_shown(ttl)}.")
    if seconds > limits.MAX_TTL_SECONDS:
        raise PublishError(
            f"ttl must be at most {limits.MAX_TTL_SECONDS} seconds (ten years; RabbitMQ "
            f"refuses a longer message expiration), got {_shown(ttl)}."
        )
    return seconds


#: The longest delay ``publish()`` accepts: ten years, as for a TTL (a message due later is
#: more likely a unit mistake than a plan).
MAX_DELAY_SECONDS = limits.MAX_TTL_SECONDS


@dataclass(frozen=True, slots=True)
class Due:
    """When a delayed message falls due: ``seconds`` after the database's clock at the
    insert, or at the instant ``at``. Exactly one is set."""

    seconds: float | None = None
    at: dt.datetime | None = None
    #: With ``at`` and a TTL, the expiry: the TTL after ``at``.
    expires_at: dt.datetime | None = None


def due(delay: object, deliver_at: object, ttl_seconds: float | None) -> Due | None:
    """``publish()``'s ``delay`` / ``deliver_at``: ``None`` for a message due now.

    ``delay`` is a timedelta or a number of seconds, finite, at least 0 and at most ten
    years (0 means now); ``deliver_at`` an aware datetime (one in the past means now). Not
    both."""
    if delay is not None and deliver_at is not None:
        raise PublishError(
            "Pass delay or deliver_at, not both: delay counts from now on the database's "
            "clock, deliver_at is an instant."
        )
    if deliver_at is not None:
        if not isinstance(deliver_at, dt.datetime):
            raise PublishError(
                f"deliver_at must be a datetime, got {type(deliver_at).__name__} "
                f"{_shown(deliver_at)}."
            )
        _aware("deliver_at", deliver_at)
        expires = None if ttl_seconds is None else _expiry_after(deliver_at, ttl_seconds)
        return Due(at=deliver_at, expires_at=expires)
    if delay is None:
        return None
    seconds = _seconds("delay", delay)
    if math.isnan(seconds) or seconds < 0:
        raise PublishError(f"delay must be at least 0 seconds, got {_shown(delay)}.")
    if seconds > MAX_DELAY_SECONDS:
        raise PublishError(
            f"delay must be at most {MAX_DELAY_SECONDS} seconds (ten years), got {_shown(delay)}."
        )
    return Due(seconds=seconds) if seconds > 0 else None


def expires_at(value: object, *, ttl_seconds: float | None) -> dt.datetime | None:
    """``publish()``'s ``expires_at``: an aware datetime, stored as given and compared with
    the database's clock (never turned into a TTL on this host's clock). Not with ``ttl``."""
    if value is None:
        return None
    if ttl_seconds is not None:
        raise PublishError(
            "Pass ttl or expires_at, not both: ttl counts from the due time on the "
            "database's clock, expires_at is an instant."
        )
    if not isinstance(value, dt.datetime):
        raise PublishError(
            f"expires_at must be a datetime, got {type(value).__name__} {_shown(value)}."
        )
    _aware("expires_at", value)
    return value


def _aware(name: str, value: dt.datetime) -> None:
    """Refuse a naive datetime: it means a different instant on each host."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise PublishError(
            f"{name} must be an aware datetime (with a time zone), got the naive "
            f"{_shown(value)}: a naive time means a different instant on each host. "
            "Use django.utils.timezone.now() + timedelta(...), or a datetime with tzinfo."
        )


def _expiry_after(at: dt.datetime, ttl_seconds: float) -> dt.datetime:
    """The expiry of a message due at the instant ``at`` with a TTL: counted from the due
    time, not from publishing."""
    try:
        return at + dt.timedelta(seconds=ttl_seconds)
    except OverflowError:
        raise PublishError(
            f"deliver_at {_shown(at)} plus the ttl of {ttl_seconds:g} seconds is past the "
            "last datetime Python can hold."
        ) from None


def _seconds(name: str, value: object) -> float:
    """A timedelta or a number of seconds, as float seconds (inf when too large)."""
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    raise PublishError(
        f"{name} must be a timedelta or a number of seconds, got {type(value).__name__} "
        f"{_shown(value)}."
    )


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
