"""The structured fields of a log line about a message, for ``logger.x(..., extra=...)``.

JSON log handlers index a record's extra attributes: every line about a message carries the
same names, so one query finds everything said about message X. Never the payload.
"""

from __future__ import annotations

from typing import Any


def fields(
    *,
    message_id: Any = None,
    topic: str | None = None,
    key: str | None = None,
    consumer: str | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    """``extra=`` for a log line about one message: ``message_id``, ``topic``, ``key``,
    ``consumer``, ``attempt`` (those known; ``message`` itself is a name logging reserves)."""
    found = {
        "message_id": None if message_id is None else str(message_id),
        "topic": topic,
        "key": key,
        "consumer": consumer,
        "attempt": attempt,
    }
    return {k: v for k, v in found.items() if v is not None}
