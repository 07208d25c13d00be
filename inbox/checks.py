"""System checks of the inbox."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.db import connections, router

from .models import InboxMessage
from .registry import registry

SUPPORTED_VENDORS = ("postgresql", "sqlite")


@checks.register(checks.Tags.database)
def check_database(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    vendor = connections[router.db_for_write(InboxMessage)].vendor
    if vendor in SUPPORTED_VENDORS:
        return []
    return [
        checks.Error(
            f"The inbox needs PostgreSQL (or SQLite for development); this database is {vendor}.",
            hint="Route the inbox and outbox models to a PostgreSQL database with a database router.",
            id="inbox_outbox.E010",
        )
    ]


@checks.register()
def check_handlers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if registry.all():
        return []
    return [
        checks.Info(
            "The inbox app is installed but no @handler is registered, so workers consume nothing.",
            hint="Add a handlers.py module to one of your apps with @inbox.handler('topic') functions.",
            id="inbox_outbox.I011",
        )
    ]
