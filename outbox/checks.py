"""System checks: catch a bad ``INBOX_OUTBOX`` at start-up, with the fix in the hint."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .conf import UNKNOWN_TOPIC_POLICIES, UNROUTABLE_POLICIES, get_settings, unknown_keys
from .exceptions import OutboxConfigurationError


@checks.register(checks.Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for key in unknown_keys():
        errors.append(
            checks.Warning(
                f'INBOX_OUTBOX has an unknown key "{key}".',
                hint="Check the spelling against the settings reference in docs/settings.md.",
                id="inbox_outbox.W001",
            )
        )
    try:
        conf = get_settings()
    except (TypeError, OutboxConfigurationError) as exc:
        return [
            *errors,
            checks.Error(f"INBOX_OUTBOX cannot be read: {exc}", id="inbox_outbox.E000"),
        ]
    if conf.unroutable not in UNROUTABLE_POLICIES:
        errors.append(
            checks.Error(
                f'INBOX_OUTBOX["UNROUTABLE"] is {conf.unroutable!r}.',
                hint=f"Use one of {', '.join(UNROUTABLE_POLICIES)}.",
                id="inbox_outbox.E001",
            )
        )
    if conf.unknown_topic not in UNKNOWN_TOPIC_POLICIES:
        errors.append(
            checks.Error(
                f'INBOX_OUTBOX["UNKNOWN_TOPIC"] is {conf.unknown_topic!r}.',
                hint=f"Use one of {', '.join(UNKNOWN_TOPIC_POLICIES)}.",
                id="inbox_outbox.E002",
            )
        )
    if not conf.service or not isinstance(conf.service, str):
        errors.append(
            checks.Error(
                'INBOX_OUTBOX["SERVICE"] must be a non-empty string.',
                hint="Name the service (it becomes the CloudEvents source and the queue name).",
                id="inbox_outbox.E003",
            )
        )
    for name in (
        "relay_batch_size",
        "max_payload_bytes",
        "relay_max_attempts",
        "inbox_max_attempts",
        "prefetch_count",
        "max_body_bytes",
        "inbox_batch_size",
    ):
        value = getattr(conf, name)
        if not isinstance(value, int) or value < 1:
            errors.append(
                checks.Error(
                    f'INBOX_OUTBOX["{name.upper()}"] must be a positive integer, got {value!r}.',
                    hint="Remove it to use the default.",
                    id="inbox_outbox.E004",
                )
            )
    if conf.relay_confirm_timeout >= conf.relay_lease_seconds:
        errors.append(
            checks.Error(
                'INBOX_OUTBOX["RELAY_CONFIRM_TIMEOUT"] must be shorter than "RELAY_LEASE_SECONDS".',
                hint="Otherwise a slow batch's lease expires and another relay sends it again.",
                id="inbox_outbox.E005",
            )
        )
    if conf.prepare_statements not in (None, True, False):
        errors.append(
            checks.Error(
                'INBOX_OUTBOX["PREPARE_STATEMENTS"] must be None, True or False, '
                f"got {conf.prepare_statements!r}.",
                hint="Remove it to let the library decide per database connection.",
                id="inbox_outbox.E006",
            )
        )
    if not isinstance(conf.defer_inserts, bool):
        errors.append(
            checks.Error(
                f'INBOX_OUTBOX["DEFER_INSERTS"] must be True or False, got {conf.defer_inserts!r}.',
                hint="Remove it to use the default (True).",
                id="inbox_outbox.E007",
            )
        )
    return errors
