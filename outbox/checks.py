"""System checks of the outbox app (the shared settings checks live in the kernel)."""

from __future__ import annotations

from collections import abc
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.db import connections, router

from inbox_outbox.checks import database_errors
from inbox_outbox.conf import get_settings
from inbox_outbox.exceptions import ConfigurationError

from .listening import behind_transaction_pooler
from .models import OutboxMessage, Sequence


def check_database(
    app_configs: abc.Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    aliases = [router.db_for_write(model) for model in (OutboxMessage, Sequence)]
    return database_errors(aliases, app="outbox")


def check_listener(
    app_configs: abc.Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """A relay behind a pooler in transaction mode with nowhere to LISTEN."""
    try:
        conf = get_settings()
    except ConfigurationError:  # reported by the settings check
        return []
    wrapper = connections[router.db_for_write(OutboxMessage)]
    if (
        wrapper.vendor != "postgresql"
        or not conf.nudge
        or conf.relay_listen_dsn is not None
        or not behind_transaction_pooler(wrapper)
    ):
        return []
    return [
        checks.Warning(
            f"The outbox's database {wrapper.alias!r} is behind a pooler in transaction mode "
            "(DISABLE_SERVER_SIDE_CURSORS), where the relay's LISTEN cannot work: an "
            "outbox_relay process would find new messages only every RELAY_POLL_INTERVAL.",
            hint='Set INBOX_OUTBOX["RELAY_LISTEN_DSN"] to a direct connection to PostgreSQL, '
            'e.g. "host=db-primary port=5432" (what it leaves out comes from DATABASES). '
            "If you run the relay only as the Celery task, silence inbox_outbox.W002.",
            id="inbox_outbox.W002",
        )
    ]


def register() -> None:
    # Not tagged "database": they read only settings, so a plain `manage.py check` runs them.
    checks.register(check_database, checks.Tags.compatibility)
    checks.register(check_listener, checks.Tags.compatibility)
