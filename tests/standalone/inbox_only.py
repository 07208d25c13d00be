"""A consumer: the inbox app alone, with one app of handlers."""

from .base import *  # noqa: F403

INSTALLED_APPS = ["inbox", "tests.standalone.handlers_app"]
