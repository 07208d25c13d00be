"""django-inbox-outbox: the inbox, exactly-once effects for consumers.

Declare handlers in ``<app>/handlers.py`` with :func:`handler`; a Celery worker of
the project consumes the service's queue and runs each message's handlers once in
effect. :func:`exactly_once` gives plain Celery tasks the same guarantee.
"""

from typing import TYPE_CHECKING, Any

from .exceptions import (
    DoNotRetry,
    HandlerRegistrationError,
    InboxError,
    InvalidMessage,
    RetryAfter,
)
from .message import Message
from .registry import handler

__all__ = [
    "DoNotRetry",
    "HandlerRegistrationError",
    "InboxError",
    "InboxMessage",
    "InvalidMessage",
    "Message",
    "RetryAfter",
    "exactly_once",
    "handler",
]

if TYPE_CHECKING:
    from .models import InboxMessage
    from .once import exactly_once


def __getattr__(name: str) -> Any:
    # These touch models, which exist only once Django's app registry is ready.
    if name == "InboxMessage":
        from .models import InboxMessage

        return InboxMessage
    if name == "exactly_once":
        from .once import exactly_once

        return exactly_once
    raise AttributeError(f"module 'inbox' has no attribute {name!r}")
