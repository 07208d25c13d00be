"""A service that publishes and consumes: both apps."""

from .base import *  # noqa: F403

INSTALLED_APPS = ["outbox", "inbox", "tests.standalone.handlers_app"]
