"""The relay's ``LISTEN`` connection: where it goes and when there is none.

``LISTEN`` belongs to one server session. Behind a pooler in transaction mode the session
changes with each transaction, so notifications would reach some other client or nobody:
such a database (Django's marker for it is ``DISABLE_SERVER_SIDE_CURSORS``) gets a listener
only through ``RELAY_LISTEN_DSN``, a direct connection to PostgreSQL.
"""

from __future__ import annotations

import logging
from typing import Any

from inbox_outbox.conf import get_settings

from . import sql

logger = logging.getLogger(__name__)

#: Aliases already warned about: the relay asks again on every loop while it has no listener.
_warned: set[str] = set()


def behind_transaction_pooler(wrapper: Any) -> bool:
    """Whether the database is marked as reached through a pooler in transaction mode."""
    return bool(wrapper.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"))


def listen_params(wrapper: Any) -> dict[str, Any] | None:
    """Connection parameters for the listener, or ``None`` when it cannot listen."""
    params: dict[str, Any] = wrapper.get_connection_params()
    dsn = get_settings().relay_listen_dsn
    if dsn is not None:
        from psycopg.conninfo import conninfo_to_dict

        params.update(conninfo_to_dict(dsn))
        return params
    if behind_transaction_pooler(wrapper):
        if wrapper.alias in _warned:
            return None
        _warned.add(wrapper.alias)
        logger.warning(
            "outbox relay: database %r is behind a pooler in transaction mode "
            "(DISABLE_SERVER_SIDE_CURSORS), where LISTEN cannot work; polling every "
            'RELAY_POLL_INTERVAL instead. Set INBOX_OUTBOX["RELAY_LISTEN_DSN"] to a direct '
            'connection to PostgreSQL (e.g. "host=db port=5432") to wake on each publish.',
            wrapper.alias,
        )
        return None
    return params


def open_listener(wrapper: Any) -> Any:
    """A new autocommit connection listening for ``publish()``'s nudge, or ``None``."""
    if wrapper.vendor != "postgresql":
        return None
    params = listen_params(wrapper)
    if params is None:
        return None
    conn = wrapper.get_new_connection(params)
    conn.autocommit = True
    conn.execute(sql.LISTEN)
    return conn
