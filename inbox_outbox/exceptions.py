"""Errors the shared kernel raises. Each app derives its own errors from its own base class."""

from django.core.exceptions import ImproperlyConfigured


class ConfigurationError(ImproperlyConfigured):
    """Raised when ``INBOX_OUTBOX`` (or the broker URL) holds a value the library cannot use.

    ``manage.py check`` reports the same problems one by one, each with its fix.
    """
