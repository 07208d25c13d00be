"""System checks of the outbox app (the shared settings checks live in the kernel)."""

from __future__ import annotations

from collections import abc
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.db import router

from inbox_outbox.checks import database_errors

from .models import OutboxMessage, Sequence


def check_database(
    app_configs: abc.Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    aliases = [router.db_for_write(model) for model in (OutboxMessage, Sequence)]
    return database_errors(aliases, app="outbox")


def register() -> None:
    # Not tagged "database": it reads only the vendor, so a plain `manage.py check` runs it.
    checks.register(check_database, checks.Tags.compatibility)
