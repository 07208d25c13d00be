"""The outbox's SQL that the ORM cannot express, each statement named for what it does.

Everything else goes through the ORM. Statements here are built once per shape and cached.
"""

from __future__ import annotations

import functools

#: The channel ``publish()`` notifies and ``outbox_relay`` listens on (PostgreSQL).
NOTIFY_CHANNEL = "outbox_relay"

TABLE = "outbox_message"
SEQUENCE_TABLE = "outbox_sequence"

#: Columns ``publish()`` writes, with the SQL for each value: %s takes a parameter.
INSERT_VALUES = {
    "id": "%s",
    "topic": "%s",
    "key": "%s",
    "sequence": "%s",
    "epoch": "%s",
    "payload": "%s",
    "headers": "%s",
    "dedup_key": "%s",
    "status": "'pending'",
    "attempts": "0",
    # Due now on the database's clock: the relay compares it with its now(), never with
    # the publishing host's clock.
    "available_at": "CURRENT_TIMESTAMP",
    "lease_owner": "''",
    "created_at": "%s",
    "expires_at": "%s",  # a TTL in seconds; the vendor's expression makes it a time
    "last_error": "''",
}

#: Optional columns that are absent get these literals instead, so that the common message
#: binds five parameters rather than ten.
ABSENT_VALUES = {
    "key": "NULL",
    "sequence": "NULL",
    "epoch": "NULL",
    "headers": "'{}'",
    "dedup_key": "NULL",
    "expires_at": "NULL",
}


#: The database's clock plus %s seconds.
_IN_SECONDS = {
    "postgresql": "now() + make_interval(secs => %s)",
    "sqlite": "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '+' || %s || ' seconds')",
}


@functools.cache
def insert_message(vendor: str, *, notify: bool, absent: frozenset[str] = frozenset()) -> str:
    """``INSERT`` one outbox row, with the columns in ``absent`` left at their literal; on
    PostgreSQL with ``notify``, the relay's ``NOTIFY`` in the same round trip."""
    values = {
        column: ABSENT_VALUES[column] if column in absent else sql
        for column, sql in INSERT_VALUES.items()
    }
    if "expires_at" not in absent:
        values["expires_at"] = _IN_SECONDS[vendor]
    if vendor == "postgresql":
        values["payload"] = "%s::jsonb"
        if "headers" not in absent:
            values["headers"] = "%s::jsonb"
    sql = f"INSERT INTO {TABLE} ({', '.join(values)}) VALUES ({', '.join(values.values())})"
    if vendor == "postgresql" and notify:
        # The notification is delivered at commit and discarded on rollback; PostgreSQL
        # folds repeats within one transaction.
        sql = f"WITH row AS ({sql} RETURNING 1) SELECT pg_notify('{NOTIFY_CHANNEL}', '') FROM row"
    return sql


#: A new epoch: the database's clock in microseconds since 1970.
_EPOCH_NOW = {
    "postgresql": "(extract(epoch from clock_timestamp()) * 1000000)::bigint",
    "sqlite": "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)",
}


@functools.cache
def next_sequence(vendor: str) -> str:
    """Hand out the next (epoch, sequence) of a (topic, key): the row lock it takes lasts
    until commit, so same-key publishers serialize and sequence order is commit order. A
    counter row made afresh starts a new epoch at 1."""
    return (
        f"INSERT INTO {SEQUENCE_TABLE} (topic, key, last, epoch, updated_at) "
        f"VALUES (%s, %s, 1, {_EPOCH_NOW[vendor]}, CURRENT_TIMESTAMP) "
        f"ON CONFLICT (topic, key) DO UPDATE SET last = {SEQUENCE_TABLE}.last + 1, "
        "updated_at = CURRENT_TIMESTAMP RETURNING epoch, last"
    )


@functools.cache
def new_epoch(vendor: str) -> str:
    """Start every counter again at a new epoch (after a restore from a backup)."""
    return f"UPDATE {SEQUENCE_TABLE} SET last = 0, epoch = {_EPOCH_NOW[vendor]}"


#: Wait for the relay's nudge (PostgreSQL).
LISTEN = f"LISTEN {NOTIFY_CHANNEL}"

#: Extend the leases this relay holds on the given rows, on the database's clock.
RENEW_LEASES = (
    f"UPDATE {TABLE} SET lease_until = now() + make_interval(secs => %s) "
    "WHERE id = ANY(%s) AND lease_owner = %s AND status IN ('pending', 'failed')"
)
