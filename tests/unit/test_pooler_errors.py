"""Which database errors on publish()'s statements mean "the pooler gave us another server
session" (StatementLost, saying what to set) and which mean something else."""

import pytest
from psycopg import errors

from outbox.session import lost_statement


@pytest.mark.parametrize(
    "error",
    [
        errors.InvalidSqlStatementName('prepared statement "inbox_outbox_ab" does not exist'),
        errors.DuplicatePreparedStatement('prepared statement "inbox_outbox_ab" already exists'),
        # PgBouncer 1.21+, which tracks protocol-level prepared statements itself.
        errors.ProtocolViolation("prepared statement name is already in use"),
    ],
)
def test_a_statement_missing_from_or_already_in_the_session_is_a_lost_statement(error):
    assert lost_statement(error)


@pytest.mark.parametrize(
    "error",
    [
        # What PgBouncer says when the server connection dies: an outage, not our statement.
        errors.ProtocolViolation("server conn crashed?"),
        errors.UniqueViolation("duplicate key value violates unique constraint"),
        None,
    ],
)
def test_a_crashed_server_connection_or_a_content_error_is_not_a_lost_statement(error):
    assert not lost_statement(error)
