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
    # A delayed message's due time; see insert_message().
    "available_at": "%s",
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
    # Due now on the database's clock: the relay compares it with its now(), never with
    # the publishing host's clock.
    "available_at": "CURRENT_TIMESTAMP",
    "expires_at": "NULL",
}


#: The database's clock plus %s seconds.
_IN_SECONDS = {
    "postgresql": "now() + make_interval(secs => %s)",
    "sqlite": "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '+' || %s || ' seconds')",
}
#: The same from the statement's time rather than the transaction's start (PostgreSQL's
#: now()), so that a delay counts from publish() however long the transaction ran before.
_FROM_STATEMENT = {
    "postgresql": "clock_timestamp() + make_interval(secs => %s)",
    "sqlite": _IN_SECONDS["sqlite"],
}

#: How a delayed message's due time is given: seconds from the database's clock, or an instant.
DELAY, AT = "delay", "at"


@functools.cache
def insert_message(
    vendor: str,
    *,
    notify: bool,
    absent: frozenset[str] = frozenset(),
    due: str | None = None,
    expiry_at: bool = False,
) -> str:
    """``INSERT`` one outbox row, with the columns in ``absent`` left at their literal; on
    PostgreSQL with ``notify``, the relay's ``NOTIFY`` in the same round trip.

    A message due now (``due`` None, ``available_at`` absent) is ``pending`` and its
    ``expires_at`` parameter is a TTL in seconds from the database's clock. A delayed one is
    ``scheduled``: with ``due=DELAY`` both ``available_at`` and ``expires_at`` are seconds
    from the database's clock (the delay, and the delay plus the TTL: a TTL counts from the
    due time); with ``due=AT`` both are instants. With ``expiry_at`` the ``expires_at``
    parameter is an instant whatever the due time (``publish(expires_at=...)``)."""
    assert (due is None) == ("available_at" in absent), "a due time exactly when delayed"
    values = {
        column: ABSENT_VALUES[column] if column in absent else sql
        for column, sql in INSERT_VALUES.items()
    }
    if due is not None:
        values["status"] = "'scheduled'"
    if due == DELAY:
        values["available_at"] = _FROM_STATEMENT[vendor]
    if "expires_at" not in absent and not expiry_at:
        values["expires_at"] = _FROM_STATEMENT[vendor] if due == DELAY else _IN_SECONDS[vendor]
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


# -- the relay's claim ---------------------------------------------------------------------
# A keyed message may go out only as part of its key's run: the unsent rows of its (topic,
# key) in (epoch, sequence) order, from the lowest on (the head), each due and unleased,
# with consecutive sequences. KEY_RUNS is the one statement that decides it; the others
# lease what it found (LEASE_RUNS) or the keyless rows (CLAIM_KEYLESS). All compare times
# on the database's clock. Each statement is O(its limit), however many rows are blocked:
# the walk jumps from key to key down outbox_unsent_key_idx, so the rows queued behind a
# blocked head cost nothing, and a keyless row in backoff lies past the range it scans.

#: The statuses a relay may still send, as SQL.
UNSENT_SQL = "('pending', 'failed')"

#: The database's clock, and that clock plus %s seconds, as each vendor stores datetimes.
_NOW = {
    "postgresql": "now()",
    "sqlite": "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')",
}
_LEASE_UNTIL = {
    "postgresql": "now() + make_interval(secs => %s)",
    "sqlite": "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '+' || %s || ' seconds')",
}
#: Row locks that a concurrent claim skips instead of waiting for (SQLite has one writer).
_SKIP_LOCKED = {"postgresql": "FOR UPDATE SKIP LOCKED", "sqlite": ""}
_SKIP_LOCKED_OF_M = {"postgresql": "FOR UPDATE OF m SKIP LOCKED", "sqlite": ""}
#: A key's epoch in order: rows from before epochs existed count as epoch 0.
EPOCH = "COALESCE({t}.epoch, 0)"
#: The runs KEY_RUNS found, passed back to LEASE_RUNS as one JSON parameter.
_RUNS = {
    "postgresql": (
        "SELECT * FROM jsonb_to_recordset(%s::jsonb) "
        "AS r(topic text, key text, epoch bigint, head bigint, n bigint)"
    ),
    "sqlite": (
        "SELECT json_extract(value, '$.topic') AS topic, json_extract(value, '$.key') AS key, "
        "json_extract(value, '$.epoch') AS epoch, json_extract(value, '$.head') AS head, "
        "json_extract(value, '$.n') AS n FROM json_each(%s)"
    ),
}


def _claimable(t: str, vendor: str) -> str:
    """Row ``t`` may be claimed now: unsent, due and not leased (its key aside)."""
    now = _NOW[vendor]
    return (
        f"{t}.status IN {UNSENT_SQL} AND {t}.available_at <= {now} "
        f"AND ({t}.lease_until IS NULL OR {t}.lease_until < {now})"
    )


@functools.cache
def key_runs(vendor: str) -> str:
    """Walk the keys with unsent messages, after a cursor, and return each key's claimable
    run: the head (lowest unsent (epoch, sequence)) and how many rows from it are claimable
    with consecutive sequences. A key whose head is in backoff, leased or absent gives 0.

    Parameters, in order: the cursor's topic and key (the walk starts strictly after it;
    ``''``, ``''`` for the first key), the most rows to find, the most keys to visit,
    whether to stop at a bound (0 or 1) and the bound's topic and key (inclusive).

    Rows: ``depth, topic, key, epoch, head, run, before`` for every key with a run, in walk
    order, plus the last key visited (``before`` is the rows found ahead of it). The walk
    stops at the row limit, the key budget or the last key.
    """
    epoch_n, epoch_m = EPOCH.format(t="n"), EPOCH.format(t="m")
    # Each step: the next key's head, one index descent past every row of the current key.
    next_head = (
        f"SELECT n.id FROM {TABLE} n WHERE n.status IN {UNSENT_SQL} AND n.key IS NOT NULL "
        "AND (n.topic, n.key) > (w.topic, w.key) "
        "AND (w.bounded = 0 OR (n.topic, n.key) <= (w.stop_topic, w.stop_key)) "
        f"ORDER BY n.topic, n.key, {epoch_n}, n.sequence LIMIT 1"
    )
    # Its run: the claimable rows from the head in order, while the sequences stay
    # consecutive (a row leased, in backoff, locked or missing ends it), at most as many as
    # the walk still needs.
    run = (
        "SELECT count(*) FROM ("
        f"SELECT m.sequence, row_number() OVER (ORDER BY m.sequence, m.id) AS rn FROM {TABLE} m "
        f"WHERE m.key IS NOT NULL AND m.topic = h.topic AND m.key = h.key "
        f"AND {epoch_m} = {EPOCH.format(t='h')} "
        "AND m.sequence >= h.sequence AND m.sequence < h.sequence + w.lim - w.before - w.run "
        f"AND {_claimable('m', vendor)}"
        ") s WHERE s.sequence = h.sequence + s.rn - 1"
    )
    # A key with a scheduled message ahead of its head is held back whole until that one is
    # due and sent (a delayed keyed message keeps its place): one probe of
    # outbox_scheduled_key_idx per key visited.
    scheduled_ahead = (
        f"SELECT 1 FROM {TABLE} s WHERE s.status = 'scheduled' AND s.key IS NOT NULL "
        "AND s.topic = h.topic AND s.key = h.key "
        f"AND ({EPOCH.format(t='s')}, s.sequence) < ({EPOCH.format(t='h')}, h.sequence)"
    )
    return (
        "WITH RECURSIVE walk (depth, topic, key, epoch, head, run, before, "
        "lim, budget, bounded, stop_topic, stop_key) AS ("
        "SELECT 0, CAST(%s AS VARCHAR(255)), CAST(%s AS VARCHAR(255)), CAST(0 AS BIGINT), "
        "CAST(0 AS BIGINT), CAST(0 AS BIGINT), CAST(0 AS BIGINT), "
        "CAST(%s AS BIGINT), CAST(%s AS INTEGER), "
        "CAST(%s AS INTEGER), CAST(%s AS VARCHAR(255)), CAST(%s AS VARCHAR(255)) "
        "UNION ALL "
        f"SELECT w.depth + 1, h.topic, h.key, {EPOCH.format(t='h')}, h.sequence, "
        f"CASE WHEN EXISTS ({scheduled_ahead}) THEN 0 ELSE ({run}) END, "
        "w.before + w.run, w.lim, w.budget, w.bounded, w.stop_topic, w.stop_key "
        f"FROM walk w JOIN {TABLE} h ON h.id = ({next_head}) "
        "WHERE w.depth < w.budget AND w.before + w.run < w.lim"
        ") "
        "SELECT depth, topic, key, epoch, head, run, before FROM walk "
        "WHERE depth > 0 AND (run > 0 OR depth = (SELECT max(depth) FROM walk)) ORDER BY depth"
    )


@functools.cache
def lease_runs(vendor: str) -> str:
    """Lease the runs KEY_RUNS found, as far as each is still claimable in one piece:
    a row that another claim has locked, leased or sent meanwhile ends its run there.

    Parameters: the runs as JSON (``[{"topic", "key", "epoch", "head", "n"}, …]``), the
    lease's owner, its seconds. Returns the ids leased.
    """
    return (
        f"WITH runs AS ({_RUNS[vendor]}), "
        "locked AS ("
        f"SELECT m.id, m.topic, m.key, m.sequence, r.head FROM runs r JOIN {TABLE} m "
        f"ON m.topic = r.topic AND m.key = r.key AND {EPOCH.format(t='m')} = r.epoch "
        "AND m.sequence >= r.head AND m.sequence < r.head + r.n "
        f"WHERE m.key IS NOT NULL AND {_claimable('m', vendor)} {_SKIP_LOCKED_OF_M[vendor]}"
        "), "
        "kept AS ("
        "SELECT id FROM (SELECT id, sequence, head, "
        "row_number() OVER (PARTITION BY topic, key ORDER BY sequence, id) AS rn FROM locked) l "
        "WHERE sequence = head + rn - 1"
        ") "
        f"UPDATE {TABLE} SET lease_owner = %s, lease_until = {_LEASE_UNTIL[vendor]} "
        "WHERE id IN (SELECT id FROM kept) RETURNING id"
    )


@functools.cache
def claim_keyless(vendor: str) -> str:
    """Lease up to %s due keyless rows, the longest due first, skipping rows other claims
    hold. Parameters: the limit, the lease's owner, its seconds. Returns the ids leased."""
    return (
        f"WITH due AS (SELECT m.id FROM {TABLE} m WHERE m.key IS NULL "
        f"AND {_claimable('m', vendor)} ORDER BY m.available_at, m.id LIMIT %s "
        f"{_SKIP_LOCKED[vendor]}) "
        f"UPDATE {TABLE} SET lease_owner = %s, lease_until = {_LEASE_UNTIL[vendor]} "
        "WHERE id IN (SELECT id FROM due) RETURNING id"
    )


# -- delayed messages ----------------------------------------------------------------------
#: The most scheduled rows one claim promotes: a claim stays bounded however many fall due at
#: once; the rest are promoted by the next claims, the earliest due first.
PROMOTE_STEP = 1000


@functools.cache
def promote_due(vendor: str) -> str:
    """Make up to %s scheduled rows that are due on the database's clock ``pending``, the
    earliest due first, skipping rows another transaction holds (a cancel, another relay's
    promotion). Served by ``outbox_scheduled_due_idx``: the rows scheduled for later are
    never read. Their due time stays their ``available_at``, so the claim takes them in due
    order."""
    return (
        f"UPDATE {TABLE} SET status = 'pending' WHERE id IN ("
        f"SELECT m.id FROM {TABLE} m WHERE m.status = 'scheduled' "
        f"AND m.available_at <= {_NOW[vendor]} ORDER BY m.available_at, m.id LIMIT %s "
        f"{_SKIP_LOCKED[vendor]})"
    )


#: Seconds from the database's clock to the earliest scheduled row's due time (negative when
#: one is overdue), NULL when none is scheduled; one descent of outbox_scheduled_due_idx.
_SECONDS_TO_NEXT_DUE = {
    "postgresql": (
        f"SELECT extract(epoch from (min(available_at) - now()))::float8 FROM {TABLE} "
        "WHERE status = 'scheduled'"
    ),
    "sqlite": (
        f"SELECT (julianday(min(available_at)) - julianday('now')) * 86400.0 FROM {TABLE} "
        "WHERE status = 'scheduled'"
    ),
}


def seconds_to_next_due(vendor: str) -> str:
    """See :data:`_SECONDS_TO_NEXT_DUE`."""
    return _SECONDS_TO_NEXT_DUE[vendor]
