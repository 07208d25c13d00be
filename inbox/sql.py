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
    "source",
    "key",
    "epoch",
    "sequence",
    "voids",
    "payload",
    "headers",
    "raw_body",
    "status",
    "attempts",
    "delivery_count",
    "received_at",
    "processed_at",
    "next_attempt_at",
    "last_error",
    "traceback",
)

_JSON_COLUMNS = ("payload", "headers")


#: The database's clock plus %s seconds (NULL stays NULL).
_IN_SECONDS = {
    "postgresql": "now() + make_interval(secs => %s)",
    "sqlite": "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '+' || %s || ' seconds')",
}


def _row_values(vendor: str) -> str:
    """One row's ``VALUES`` tuple, parameters in :data:`ROW_COLUMNS` order."""
    cast = "::jsonb" if vendor == "postgresql" else ""
    special = {
        # Times on the database's clock, which the sweep and the waiting checks compare
        # with: the receiving host's clock never enters.
        "received_at": "CURRENT_TIMESTAMP",
        "processed_at": "CASE WHEN %s THEN CURRENT_TIMESTAMP END",
        "next_attempt_at": _IN_SECONDS[vendor],
    }
    values = ", ".join(
        special.get(c, f"%s{cast}" if c in _JSON_COLUMNS else "%s") for c in ROW_COLUMNS
    )
    return f"({values})"


_COLUMNS = ", ".join(f'"{c}"' for c in ROW_COLUMNS)


@functools.cache
def insert_row_unless_seen(vendor: str) -> str:
    """Insert an inbox row unless (consumer, message id) has one; ``RETURNING id`` tells
    which happened. The unique index is the dedup: a concurrent duplicate waits on it."""
    return (
        f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES {_row_values(vendor)} "
        "ON CONFLICT (consumer, message_id) DO NOTHING RETURNING id"
    )


#: The most rows :func:`insert_rows_unless_seen` writes at once: 18 parameters a row, 9,000
#: a statement, well under SQLite's 32,766 and PostgreSQL's 65,535.
ROWS_PER_INSERT = 500

#: About the most bytes of values one insert of an inbox batch carries (bodies are up to
#: ``MAX_BODY_BYTES`` each): far below PostgreSQL's 255 MiB for a ``jsonb`` value.
BYTES_PER_INSERT = 64 * 1024 * 1024


@functools.cache
def insert_rows_unless_seen(vendor: str, count: int) -> str:
    """:func:`insert_row_unless_seen` for ``count`` rows in one statement: those whose
    (consumer, message id) has no row yet are inserted, and returned as (consumer,
    message_id). A pair given twice is inserted once (the second conflicts with the first)."""
    values = ", ".join([_row_values(vendor)] * count)
    return (
        f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES {values} "
        "ON CONFLICT (consumer, message_id) DO NOTHING RETURNING consumer, message_id"
    )


#: The fields of a record of :func:`insert_records_unless_seen`, with their types: the
#: parameters of a row in :data:`ROW_COLUMNS` order (all but ``received_at``, which is the
#: database's now), each named for its column. ``payload`` and ``headers`` are JSON text,
#: ``raw_body`` base64, ``processed_at`` whether it is now, ``next_attempt_at`` in how many
#: seconds.
RECORD_FIELDS = (
    ("consumer", "text"),
    ("message_id", "text"),
    ("topic", "text"),
    ("source", "text"),
    ("key", "text"),
    ("epoch", "bigint"),
    ("sequence", "bigint"),
    ("voids", "text"),
    ("payload", "text"),
    ("headers", "text"),
    ("raw_body", "text"),
    ("status", "text"),
    ("attempts", "integer"),
    ("delivery_count", "integer"),
    ("processed_at", "boolean"),
    ("next_attempt_at", "double precision"),
    ("last_error", "text"),
    ("traceback", "text"),
)


@functools.cache
def insert_records_unless_seen() -> str:
    """:func:`insert_rows_unless_seen` on PostgreSQL with one parameter for every row: a JSON
    array of records (:data:`RECORD_FIELDS`), inserted in array order.

    One short statement whatever the number of rows: nothing to plan per row, and one
    parameter for the client to send instead of 18 a row (on a client-side binding cursor,
    Django's default, each is quoted into the statement in Python). Measured on a 50-row
    insert: about half the time of the ``VALUES`` form, a third of the client's CPU."""
    fields = ", ".join(f'"{name}" {kind}' for name, kind in RECORD_FIELDS)
    names = ", ".join(f'"{name}"' for name, _ in RECORD_FIELDS)
    special = {
        "received_at": "CURRENT_TIMESTAMP",
        "processed_at": "CASE WHEN r.processed_at THEN CURRENT_TIMESTAMP END",
        "next_attempt_at": "now() + make_interval(secs => r.next_attempt_at)",
        "payload": "CAST(r.payload AS jsonb)",
        "headers": "CAST(r.headers AS jsonb)",
        "raw_body": "decode(r.raw_body, 'base64')",
    }
    values = ", ".join(special.get(c, f'r."{c}"') for c in ROW_COLUMNS)
    return (
        f"INSERT INTO {TABLE} ({_COLUMNS}) SELECT {values} "
        f"FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS ({fields})) "
        f"WITH ORDINALITY AS r({names}, position) ORDER BY r.position "
        "ON CONFLICT (consumer, message_id) DO NOTHING RETURNING consumer, message_id"
    )


_PROGRESS_COLUMNS = "consumer, source, topic, key, epoch, last_sequence, updated_at"
_PROGRESS_ROW = "(%s, %s, %s, %s, 0, 0, CURRENT_TIMESTAMP)"
_PROGRESS_CONFLICT = (
    "ON CONFLICT (consumer, source, topic, key) DO UPDATE SET updated_at = CURRENT_TIMESTAMP"
)

#: Lock a consumer's progress row of one stream (consumer, source, topic, key) until commit,
#: creating it at epoch 0, sequence 0, and return its last settled (epoch, sequence).
LOCK_PROGRESS = (
    f"INSERT INTO {PROGRESS_TABLE} ({_PROGRESS_COLUMNS}) VALUES {_PROGRESS_ROW} "
    f"{_PROGRESS_CONFLICT} RETURNING epoch, last_sequence"
)


@functools.cache
def lock_progress_rows(count: int) -> str:
    """Lock ``count`` progress rows at once, in the order of the parameters (a multi-row
    insert takes its rows' locks in ``VALUES`` order), and return each one's stream and last
    settled (epoch, sequence)."""
    values = ", ".join([_PROGRESS_ROW] * count)
    return (
        f"INSERT INTO {PROGRESS_TABLE} ({_PROGRESS_COLUMNS}) VALUES {values} {_PROGRESS_CONFLICT} "
        "RETURNING consumer, source, topic, key, epoch, last_sequence"
    )


@functools.cache
def set_progress_rows(count: int) -> str:
    """Set ``count`` progress rows to the (epoch, sequence) given with each stream (consumer,
    source, topic, key, epoch, sequence). Unconditional: the caller holds the rows' locks and
    has decided that each moves forward (:class:`inbox.ordering.Held`)."""
    rows = ", ".join(["(%s, %s, %s, %s, CAST(%s AS bigint), CAST(%s AS bigint))"] * count)
    return (
        f"UPDATE {PROGRESS_TABLE} AS p SET epoch = v.column5, last_sequence = v.column6, "
        f"updated_at = CURRENT_TIMESTAMP FROM (VALUES {rows}) AS v "
        "WHERE p.consumer = v.column1 AND p.source = v.column2 AND p.topic = v.column3 "
        "AND p.key = v.column4"
    )


@functools.cache
def streams_with_waiting_rows(count: int) -> str:
    """Which of ``count`` streams (consumer, source, topic, key) have a waiting row (the
    partial index on waiting rows answers it)."""
    streams = ", ".join(["(%s, %s, %s, %s)"] * count)
    return (
        f"SELECT DISTINCT consumer, source, topic, key FROM {TABLE} "
        f"WHERE status = 'waiting' AND (consumer, source, topic, key) IN ({streams})"
    )
