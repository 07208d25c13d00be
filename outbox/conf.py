"""The library's settings: one ``INBOX_OUTBOX`` dict, read at call time.

Both apps read the same dict so that the service name, broker and exchange are
configured once. Values are resolved lazily and cached until Django's
``setting_changed`` signal fires, so ``override_settings`` works in tests.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .exceptions import OutboxConfigurationError

SETTING_NAME = "INBOX_OUTBOX"

UNROUTABLE_POLICIES = ("retry", "dead", "ignore")
UNKNOWN_TOPIC_POLICIES = ("reject", "ignore")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Typed view of ``settings.INBOX_OUTBOX``; field names are the dict keys, lower-cased."""

    # Shared by both apps.
    service: str = "django"
    broker_url: str | None = None
    exchange: str = "events"

    # Outbox: publishing.
    require_atomic: bool = False
    max_payload_bytes: int = 256 * 1024
    nudge: bool = True
    nudge_interval: float = 0.005
    prepare_statements: bool | None = None
    defer_inserts: bool = True

    # Outbox: relay.
    relay_batch_size: int = 500
    relay_confirm_timeout: float = 30.0
    relay_lease_seconds: float = 60.0
    relay_poll_interval: float = 1.0
    relay_max_attempts: int = 12
    relay_backoff_base: float = 2.0
    relay_backoff_max: float = 3600.0
    unroutable: str = "retry"

    # Inbox: consuming.
    queue_prefix: str = ""
    consume_in_worker: bool = True
    prefetch_count: int = 100
    inbox_batch_size: int = 50
    inbox_batch_delay: float = 0.0
    max_body_bytes: int = 1024 * 1024
    unknown_topic: str = "reject"
    inbox_max_attempts: int = 8
    inbox_backoff_base: float = 2.0
    inbox_backoff_max: float = 3600.0
    order_wait_seconds: float = 300.0
    inbox_sweep_interval: float = 2.0
    dedup_window_days: float = 30.0

    # Retention (both apps): None disables the periodic purge.
    retention_days: float | None = None

    @property
    def queue_name(self) -> str:
        """The service's queue: every worker of one service shares it (a consumer group)."""
        return f"{self.queue_prefix}{self.service}"


def _build() -> Settings:
    user: dict[str, Any] = getattr(settings, SETTING_NAME, None) or {}
    if not isinstance(user, dict):
        raise OutboxConfigurationError(
            f"settings.{SETTING_NAME} must be a dict, got {type(user).__name__}: "
            f'write {SETTING_NAME} = {{"SERVICE": "your-service", ...}}.'
        )
    known = {f.name for f in dataclasses.fields(Settings)}
    values = {}
    for key, value in user.items():
        name = key.lower()
        if name not in known:
            # Reported by the system check; ignored here so that a typo never crashes start-up.
            continue
        values[name] = value
    return Settings(**values)


@functools.cache
def get_settings() -> Settings:
    """Return the resolved settings (cached until a setting changes)."""
    return _build()


def unknown_keys() -> list[str]:
    """Keys of ``INBOX_OUTBOX`` that the library does not know (for the system check)."""
    user = getattr(settings, SETTING_NAME, None) or {}
    known = {f.name for f in dataclasses.fields(Settings)}
    return sorted(k for k in user if k.lower() not in known) if isinstance(user, dict) else []


def broker_url() -> str:
    """The broker to publish to and consume from: ours if set, else Celery's."""
    configured = get_settings().broker_url
    if configured:
        return configured
    from celery import current_app

    return current_app.conf.broker_url or "amqp://guest:guest@localhost:5672//"


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        get_settings.cache_clear()
