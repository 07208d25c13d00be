"""A producer: the outbox app alone."""

from .base import *  # noqa: F403

INSTALLED_APPS = ["outbox"]
