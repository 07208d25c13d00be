"""How ``publish()`` talks to the database: one cursor per connection, prepared statements,
and outbox rows sent with the connection's next round trip instead of one of their own.

On PostgreSQL (unless turned off, see ``PREPARE_STATEMENTS`` and ``DEFER_INSERTS``):

- Each statement is prepared once per connection (``PREPARE``; then ``EXECUTE``). Parsing and
  planning a 14-column insert into an indexed table costs about as much as running it.
  ``PREPARE`` is not transactional: a rollback keeps the statement. A statement is named
  for its text (a hash of it), so that a statement of that name in any database session,
  prepared by any process, is the same statement: behind a connection pooler that hands a
  transaction another client's server session, ``EXECUTE`` either runs our statement or
  finds none (``StatementLost``), never another statement that happens to share a name.
- Inside ``transaction.atomic()``, an outbox row is held until the connection's next round
  trip: it goes in front of the next statement (an execute wrapper) or in the same round trip
  as ``COMMIT``. Nothing can tell the difference: a later query in the transaction, a
  savepoint or its rollback all run after the row is written, and a rollback discards it.
  A transaction that publishes last, as most do, pays no round trip for its messages.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.db import DatabaseError

from inbox_outbox.conf import get_settings

from .exceptions import StatementLost

#: Errors that mean the server session is not the one the statement was prepared on (a
#: pooler in transaction mode, DISCARD ALL, DEALLOCATE): invalid_sql_statement_name and
#: duplicate_prepared_statement.
POOLER_SQLSTATES = frozenset({"26000", "42P05"})
#: protocol_violation: what PgBouncer (1.21+, tracking prepared statements) answers about
#: them, but also what it says when a server connection dies ("server conn crashed?"),
#: which is an outage, not a lost statement: only the former counts.
PROTOCOL_VIOLATION = "08P01"


def lost_statement(exc: BaseException | None) -> bool:
    """Whether a database error says that a prepared statement is missing from, or already
    in, the server session (see :data:`POOLER_SQLSTATES`)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in POOLER_SQLSTATES:
        return True
    return sqlstate == PROTOCOL_VIOLATION and "prepared statement" in str(exc)


class Session:
    """publish()'s state on one database connection."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.cursor = connection.cursor()  # kept: creating one costs as much as the insert
        self.raw = connection.connection
        self.executes: dict[str, str] = {}
        self.pending: list[tuple[str, list[Any]]] = []
        self.hooks: list[Any] | None = None  # the on-commit list holding our marker
        self.configure()

    def configure(self) -> None:
        self.conf = get_settings()
        self.prepare = _prepares(self.connection)
        # Several statements in one round trip need client-side parameter binding, and
        # psycopg 3, which reads the transaction's end from the server rather than
        # tracking it itself.
        self.defer = (
            self.prepare
            and self.conf.defer_inserts
            and hasattr(self.raw, "pgconn")
            and self.connection.settings_dict["OPTIONS"].get("server_side_binding") is not True
        )

    def usable(self) -> bool:
        # A reconnect gives a new raw connection: new cursor, nothing prepared on it.
        return self.raw is self.connection.connection and not getattr(
            self.cursor.cursor, "closed", False
        )

    def execute(self, sql: str, params: list[Any]) -> None:
        """Run ``sql`` now (after any held rows, which the execute wrapper sends first)."""
        if not self.prepare:
            self.cursor.execute(sql, params)
            return
        statement = self._prepared(sql, len(params))
        try:
            self.cursor.execute(statement, params)
        except DatabaseError as exc:
            self._check_prepared(exc.__cause__)
            raise

    def insert(self, sql: str, params: list[Any]) -> None:
        """Run ``sql`` with the connection's next round trip, or now if it cannot wait."""
        connection = self.connection
        if not (self.defer and connection.in_atomic_block):
            self.execute(sql, params)
            return
        statement = self._prepared(sql, len(params))
        if self.pending and not self._in_this_transaction():
            self.pending.clear()  # left by a transaction that rolled back
        if not self.pending:
            # Django drops on-commit entries when their transaction or savepoint rolls
            # back: the marker's absence later tells that the held rows are void.
            connection.on_commit(self._marker)
            self.hooks = connection.run_on_commit
            wrappers = connection.execute_wrappers
            if self._before_statement not in wrappers:
                # First, so that it runs before any other wrapper and is not the one
                # that Django's execute_wrapper() context manager pops.
                wrappers.insert(0, self._before_statement)
        self.pending.append((statement, params))

    def flush(self, *, commit: bool = False) -> bool:
        """Send the held rows (with ``COMMIT`` when asked); whether anything was sent."""
        wrappers = self.connection.execute_wrappers
        if self._before_statement in wrappers:
            wrappers.remove(self._before_statement)
        if not self.pending:
            return False
        pending, self.pending = self.pending, []
        if not self._in_this_transaction():
            return False
        statements = [statement for statement, _ in pending]
        if commit:
            statements.append("COMMIT")
        params = [value for _, values in pending for value in values]
        try:
            with self.connection.wrap_database_errors:
                self.cursor.cursor.execute("; ".join(statements), params)
        except DatabaseError as exc:
            self._check_prepared(exc.__cause__)
            raise
        return True

    def discard(self) -> None:
        """Forget held rows and unhook: the connection they were meant for is gone."""
        self.pending = []
        if self._before_statement in self.connection.execute_wrappers:
            self.connection.execute_wrappers.remove(self._before_statement)

    def _before_statement(
        self, execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        self.flush()
        return execute(sql, params, many, context)

    @staticmethod
    def _marker() -> None:
        """An on-commit entry that does nothing: see ``insert()``."""

    def _in_this_transaction(self) -> bool:
        hooks = self.connection.run_on_commit
        # Django replaces the list when it commits or rolls back; appends keep it. (A
        # savepoint rollback replaces it too, but runs a statement, which sends the rows.)
        if hooks is self.hooks:
            return True
        return any(entry[1] is self._marker for entry in hooks)

    def _prepared(self, sql: str, count: int) -> str:
        execute = self.executes.get(sql)
        if execute is None:
            name = statement_name(sql)
            numbered = sql
            for n in range(1, count + 1):
                numbered = numbered.replace("%s", f"${n}", 1)
            try:
                self.cursor.execute(_prepare_once(name, numbered))
            except DatabaseError as exc:
                self._check_prepared(exc.__cause__)
                raise
            execute = self.executes[sql] = f"EXECUTE {name}({', '.join(['%s'] * count)})"
        return execute

    def _check_prepared(self, exc: BaseException | None) -> None:
        """Turn a lost or foreign prepared statement into an error that says what to set."""
        if lost_statement(exc):
            self.executes.clear()
            raise StatementLost(
                "publish()'s prepared statement is not in this database session (a "
                "connection pooler in transaction mode hands each transaction another "
                "server session, or DISCARD ALL / DEALLOCATE removed it): "
                f"{str(exc).strip()}. This transaction failed; the next one prepares the "
                "statement again. Behind a pooler in transaction mode such as PgBouncer, set "
                '"DISABLE_SERVER_SIDE_CURSORS": True on the database (Django asks for it '
                'there anyway) or INBOX_OUTBOX["PREPARE_STATEMENTS"] = False.'
            ) from exc


def statement_name(sql: str) -> str:
    """The prepared statement's name: a hash of its text, the same in every process."""
    return f"inbox_outbox_{hashlib.blake2b(sql.encode(), digest_size=12).hexdigest()}"


def _prepare_once(name: str, sql: str) -> str:
    """``PREPARE`` unless this session has a statement of that name, which, named for its
    text, is this one (another connection object on this session, or another client of a
    pooler, prepared it). Never fails with "already exists", which would abort the
    caller's transaction."""
    assert "$inbox_outbox$" not in sql and "$do$" not in sql
    return (
        "DO $do$ BEGIN IF NOT EXISTS (SELECT FROM pg_prepared_statements WHERE name = "
        f"'{name}') THEN EXECUTE $inbox_outbox$PREPARE {name} AS {sql}$inbox_outbox$; "
        "END IF; END $do$"
    )


def _prepares(connection: Any) -> bool:
    """Whether to prepare statements on this connection (see ``PREPARE_STATEMENTS``)."""
    setting = get_settings().prepare_statements
    if connection.vendor != "postgresql" or setting is False:
        return False
    if setting is None:
        # Django's marker for a pooler in transaction mode, where a session's prepared
        # statements do not follow it; and psycopg's own preparing, which deallocates
        # every statement on the session at each rollback.
        return not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS") and (
            getattr(connection.connection, "prepare_threshold", None) is None
        )
    return True


def session_for(connection: Any) -> Session:
    """The connection's session, made on first use and after a reconnect."""
    current: Session | None = connection.__dict__.get("_outbox_session")
    if current is None or not current.usable():
        if current is not None:
            current.discard()
        current = Session(connection)
        connection._outbox_session = current
        _hook_commit(connection)
    elif current.conf is not get_settings():
        current.configure()
    return current


def _hook_commit(connection: Any) -> None:
    """Make the connection's commit carry the held rows (once per connection object)."""
    if "_commit" in connection.__dict__:
        return
    commit = connection._commit

    def _commit() -> Any:
        held = connection.__dict__.get("_outbox_session")
        if held is not None and held.pending:
            # After "...; COMMIT" psycopg finds the session idle and sends nothing more.
            held.flush(commit=True)
        return commit()

    connection._commit = _commit
