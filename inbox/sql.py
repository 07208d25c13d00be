"""The inbox's SQL that the ORM cannot express, each statement named for what it does."""

from __future__ import annotations

import functools

TABLE = "inbox_message"
PROGRESS_TABLE = "inbox_key_progress"

#: Columns of an inbox row as the consumer writes it, in parameter order.
ROW_COLUMNS = (
    "consumer",
    "message_id",
    "topic",
    "key",
    "sequence",
    "payload",
    "headers",
    "raw_body",
    "status",
    "attempts",
    "received_at",
    "processed_at",
    "next_attempt_at",
    "last_error",
    "traceback",
)

_JSON_COLUMNS = ("payload", "headers")


@functools.cache
def insert_row_unless_seen(vendor: str) -> str:
    """Insert an inbox row unless (consumer, message id) has one; ``RETURNING id`` tells
    which happened. The unique index is the dedup: a concurrent duplicate waits on it."""
    cast = "::jsonb" if vendor == "postgresql" else ""
    values = ", ".join(f"%s{cast}" if c in _JSON_COLUMNS else "%s" for c in ROW_COLUMNS)
    columns = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
    return (
        f"INSERT INTO {TABLE} ({columns}) VALUES ({values}) "
        "ON CONFLICT (consumer, message_id) DO NOTHING RETURNING id"
    )


#: Lock a consumer's progress row of one (topic, key) until commit, creating it at 0, and
#: return its last handled sequence.
LOCK_PROGRESS = (
    f"INSERT INTO {PROGRESS_TABLE} (consumer, topic, key, last_sequence, updated_at) "
    "VALUES (%s, %s, %s, 0, %s) ON CONFLICT (consumer, topic, key) "
    "DO UPDATE SET updated_at = excluded.updated_at RETURNING last_sequence"
)


@functools.cache
def lock_progress_rows(count: int) -> str:
    """Lock ``count`` progress rows at once, in the order of the parameters (a multi-row
    insert takes its rows' locks in ``VALUES`` order)."""
    values = ", ".join(["(%s, %s, %s, 0, %s)"] * count)
    return (
        f"INSERT INTO {PROGRESS_TABLE} (consumer, topic, key, last_sequence, updated_at) "
        f"VALUES {values} ON CONFLICT (consumer, topic, key) "
        "DO UPDATE SET updated_at = excluded.updated_at"
    )
