"""PostgreSQL behind a connection pooler in transaction mode (PgBouncer), for the test suite.

Queries go through the pooler like any PostgreSQL backend's. Creating and dropping the test
database need a session of their own, so they connect directly (``settings_dict["TEST"]
["DIRECT"]``: libpq parameters such as ``{"host": ..., "port": ...}``), and the drop ends the
sessions the pooler keeps open on the test database (``WITH (FORCE)``), which would otherwise
make PostgreSQL refuse it.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base, creation


class DatabaseCreation(creation.DatabaseCreation):
    def _execute_create_test_db(self, cursor: Any, parameters: Any, keepdb: bool = False) -> None:
        if not keepdb and self._database_exists(cursor, parameters["dbname"]):
            # A previous run left it (its drop never ran): Django's own drop would fail on
            # the pooler's sessions.
            cursor.execute(f"DROP DATABASE {parameters['dbname']} WITH (FORCE)")
        super()._execute_create_test_db(cursor, parameters, keepdb)

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        self.connection.close_pool()
        with self._nodb_cursor() as cursor:
            cursor.execute(f"DROP DATABASE {self._quote_name(test_database_name)} WITH (FORCE)")


class DatabaseWrapper(base.DatabaseWrapper):
    creation_class = DatabaseCreation

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        if self.alias == NO_DB_ALIAS:  # the connection creation and teardown use
            params.update(self.settings_dict["TEST"].get("DIRECT") or {})
        return params
