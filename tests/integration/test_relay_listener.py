"""Where the relay's LISTEN connection goes: the database's own settings, RELAY_LISTEN_DSN,
or nowhere behind a pooler in transaction mode (where LISTEN cannot work)."""

import logging

import pytest
from django.db import connection

from outbox import listening

pytestmark = pytest.mark.django_db(transaction=True)


def _notify() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify('outbox_relay', '')")


def test_the_listener_goes_to_relay_listen_dsn_and_hears_the_nudge(settings, monkeypatch):
    direct = {
        "host": "127.0.0.1",
        "port": 5432,
        **connection.settings_dict["TEST"].get("DIRECT", {}),
    }
    settings.INBOX_OUTBOX = {
        **settings.INBOX_OUTBOX,
        "RELAY_LISTEN_DSN": f"host={direct['host']} port={direct['port']}",
    }
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    listener = listening.open_listener(connection)
    try:
        assert listener.info.port == int(direct["port"])
        assert listener.info.dbname == connection.settings_dict["NAME"], "the rest from DATABASES"
        _notify()
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == ["outbox_relay"]
    finally:
        listener.close()


def test_behind_a_transaction_pooler_without_a_listen_dsn_the_relay_polls_and_says_what_to_set(
    settings, monkeypatch, caplog
):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "RELAY_LISTEN_DSN": None}
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    monkeypatch.setattr(listening, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="outbox.listening"):
        assert listening.open_listener(connection) is None
        assert listening.open_listener(connection) is None
    [record] = caplog.records
    assert 'INBOX_OUTBOX["RELAY_LISTEN_DSN"]' in record.getMessage()
