"""System checks shared by both apps: a bad ``INBOX_OUTBOX``, a missing broker URL, a
database or time-zone setting the library cannot keep its promises on. Each error's hint
says what to change. Registered by whichever of the two apps is installed (registering
twice is harmless: Django keeps a set)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core import checks
from django.db import connections

from .conf import broker_url_source, problems, unknown_keys

#: Database vendors both apps run on. MySQL/MariaDB are refused: the claim and the retry
#: sweep rely on partial indexes (MySQL has none, so every claim would scan sent rows), the
#: relay's wake-up on LISTEN/NOTIFY, and the inbox's dedup on ``INSERT … ON CONFLICT``
#: semantics that MySQL only approximates. SQLite is for development and the demo.
SUPPORTED_VENDORS = ("postgresql", "sqlite")


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every unknown key (a warning) and every broken rule of ``INBOX_OUTBOX`` (an error)."""
    found: list[checks.CheckMessage] = [
        checks.Warning(
            f'INBOX_OUTBOX has an unknown key "{key}".',
            hint="Check the spelling against the settings reference in docs/settings.md.",
            id="inbox_outbox.W001",
        )
        for key in unknown_keys()
    ]
    found += [checks.Error(p.message, hint=p.hint, id=p.id) for p in problems()]
    return found


def check_broker_url(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    urls, where = broker_url_source()
    if urls:
        return []
    return [
        checks.Error(
            f"The inbox and outbox have no usable broker: {where}.",
            hint='Set INBOX_OUTBOX["BROKER_URL"] or CELERY_BROKER_URL to your RabbitMQ, e.g. '
            '"amqp://guest:guest@localhost:5672//" (the nodes of a cluster separated by ";" or '
            "as a list), and make sure the Celery app module (project/celery.py, imported in "
            "project/__init__.py) is loaded.",
            id="inbox_outbox.E011",
        )
    ]


def check_time_zone(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if getattr(settings, "USE_TZ", True):
        return []
    return [
        checks.Error(
            "The inbox and outbox need USE_TZ = True.",
            hint="Message times travel between services (the CloudEvents time is UTC) and "
            "leases, retries and expiry are compared on the database's clock; naive local "
            "times would shift them by the server's offset. Set USE_TZ = True (Django's "
            "default since 5.0).",
            id="inbox_outbox.E013",
        )
    ]


def database_errors(aliases: Iterable[str], *, app: str) -> list[checks.CheckMessage]:
    """Errors for the databases in ``aliases`` that ``app``'s models cannot live in."""
    found: list[checks.CheckMessage] = []
    for alias in sorted(set(aliases)):
        vendor = connections[alias].vendor
        if vendor in SUPPORTED_VENDORS:
            continue
        found.append(
            checks.Error(
                f"The {app} app needs PostgreSQL (or SQLite for development); database "
                f"{alias!r} is {vendor}.",
                hint=f"Route the {app} models to a PostgreSQL database with a database router "
                "(DATABASE_ROUTERS). MySQL and MariaDB are not supported: see the README's "
                "Databases section for why.",
                id="inbox_outbox.E010",
            )
        )
    return found


def register() -> None:
    """Register the shared checks (called by each app's ``ready()``)."""
    checks.register(check_settings, checks.Tags.compatibility)
    checks.register(check_broker_url, checks.Tags.compatibility)
    checks.register(check_time_zone, checks.Tags.compatibility)
