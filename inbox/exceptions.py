"""Exceptions of the inbox. Handlers raise :class:`RetryAfter` or :class:`DoNotRetry`
to steer retries; everything else the inbox raises derives from :class:`InboxError`."""

from django.core.exceptions import ImproperlyConfigured


class InboxError(Exception):
    """Base class of every error the inbox raises."""


class HandlerRegistrationError(InboxError, ImproperlyConfigured):
    """Raised when two handlers claim the same consumer name, or a topic is invalid."""


class InvalidMessage(InboxError, ValueError):
    """Raised when a delivery cannot be read as a message; the inbox stores it as rejected."""


class RetryAfter(Exception):
    """Raise from a handler to roll back and try again after ``seconds``."""

    def __init__(self, seconds: float, reason: str = "") -> None:
        super().__init__(reason or f"retry requested in {seconds}s")
        self.seconds = float(seconds)


class DoNotRetry(Exception):
    """Raise from a handler to roll back and mark the message dead at once."""
