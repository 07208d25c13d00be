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
    "payload": "%s",
    "headers": "%s",
    "dedup_key": "%s",
    "status": "'pending'",
    "attempts": "0",
    "available_at": "%s",
    "lease_owner": "''",
    "created_at": "%s",
    "expires_at": "%s",
    "last_error": "''",
}

#: Optional columns that are absent get these literals instead, so that the common message
#: binds five parameters rather than ten.
ABSENT_VALUES = {
    "key": "NULL",
    "sequence": "NULL",
    "headers": "'{}'",
    "dedup_key": "NULL",
    "expires_at": "NULL",
}


@functools.cache
def insert_message(vendor: str, *, notify: bool, absent: frozenset[str] = frozenset()) -> str:
    """``INSERT`` one outbox row, with the columns in ``absent`` left at their literal; on
    PostgreSQL with ``notify``, the relay's ``NOTIFY`` in the same round trip."""
    values = {
        column: ABSENT_VALUES[column] if column in absent else sql
        for column, sql in INSERT_VALUES.items()
    }
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


#: Hand out the next sequence of a (topic, key): the row lock it takes lasts until commit,
#: so same-key publishers serialize and sequence order is commit order.
NEXT_SEQUENCE = (
    f"INSERT INTO {SEQUENCE_TABLE} (topic, key, last) VALUES (%s, %s, 1) "
    f"ON CONFLICT (topic, key) DO UPDATE SET last = {SEQUENCE_TABLE}.last + 1 RETURNING last"
)

#: Wait for the relay's nudge (PostgreSQL).
LISTEN = f"LISTEN {NOTIFY_CHANNEL}"

#: Extend the leases this relay holds on the given rows, on the database's clock.
RENEW_LEASES = (
    f"UPDATE {TABLE} SET lease_until = now() + make_interval(secs => %s) "
    "WHERE id = ANY(%s) AND lease_owner = %s AND status IN ('pending', 'failed')"
)
