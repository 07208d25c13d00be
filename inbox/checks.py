"""System checks of the inbox app (the shared settings checks live in the kernel)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.db import router

from inbox_outbox.checks import database_errors
from inbox_outbox.conf import get_settings
from inbox_outbox.exceptions import ConfigurationError

from .models import InboxMessage, KeyProgress
from .registry import registry


def check_database(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    aliases = [router.db_for_write(model) for model in (InboxMessage, KeyProgress)]
    return database_errors(aliases, app="inbox")


def check_handlers(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    if registry.all():
        return []
    return [
        checks.Info(
            "The inbox app is installed but no @handler is registered, so workers consume nothing.",
            hint="Add a handlers.py module to one of your installed apps with "
            "@inbox.handler('topic', name='…') functions.",
            id="inbox_outbox.I011",
        )
    ]


def check_concurrency(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Lanes that can never all have work: the broker lets a worker hold ``PREFETCH_COUNT``
    deliveries, shared by its ``INBOX_CONCURRENCY`` lanes."""
    try:
        conf = get_settings()
    except ConfigurationError:  # reported by the settings check
        return []
    if conf.prefetch_count >= conf.inbox_concurrency:
        return []
    return [
        checks.Warning(
            f"INBOX_CONCURRENCY is {conf.inbox_concurrency} but PREFETCH_COUNT only "
            f"{conf.prefetch_count}: at most {conf.prefetch_count} handler lanes can have work.",
            hint="Raise PREFETCH_COUNT to at least INBOX_CONCURRENCY (each lane takes up to "
            "PREFETCH_COUNT // INBOX_CONCURRENCY deliveries at once, at most INBOX_BATCH_SIZE).",
            id="inbox_outbox.W003",
        )
    ]


def register() -> None:
    # Not tagged "database": it reads only the vendor, so a plain `manage.py check` runs it.
    checks.register(check_database, checks.Tags.compatibility)
    checks.register(check_handlers)
    checks.register(check_concurrency)
