"""Exceptions raised by the outbox. Catch :class:`OutboxError` to catch them all."""

from django.db import ProgrammingError

from inbox_outbox.exceptions import ConfigurationError


class OutboxError(Exception):
    """Base class of every error the outbox raises."""


class PublishError(OutboxError, ValueError):
    """Raised when ``publish()`` is given something it cannot store; nothing was written."""


class PayloadTooLarge(PublishError):
    """Raised when the encoded payload exceeds ``INBOX_OUTBOX["MAX_PAYLOAD_BYTES"]``."""


class NotInTransaction(PublishError):
    """Raised when ``REQUIRE_ATOMIC`` is on and ``publish()`` runs outside ``transaction.atomic()``."""


class StatementLost(OutboxError, ProgrammingError):
    """Raised when ``publish()``'s prepared statement is not in the database session it runs
    on (a connection pooler in transaction mode, or ``DISCARD ALL``). The transaction fails,
    as on any database error; the next one prepares the statement again. The message says
    what to set: ``DISABLE_SERVER_SIDE_CURSORS`` on the database, or ``PREPARE_STATEMENTS``."""


class ReplayRefused(OutboxError):
    """Raised when a replay would do what the operator did not ask for: re-run consumers'
    handlers for messages sent before their dedup window (``past_dedup_window``), or send
    messages whose expiry has passed (``clear_expiry``). Nothing was changed; the message
    says how many rows are concerned and which flag sends them anyway."""


class BrokerUnavailable(OutboxError):
    """Raised by the relay when the broker cannot be reached; no attempt is charged."""


class OutboxConfigurationError(OutboxError, ConfigurationError):
    """Raised when ``INBOX_OUTBOX`` holds a value the outbox cannot use."""
