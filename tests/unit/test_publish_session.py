"""How publish() reaches the database on PostgreSQL: prepared statements, and rows held
until the connection's next round trip. The row, its visibility and its fate must be
exactly those of a plain INSERT in the caller's transaction."""

import datetime as dt

import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction

from outbox import StatementLost, publish
from outbox.models import OutboxMessage, Sequence
from project.shop.models import Order

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        bool(django_settings.DATABASES["default"].get("DISABLE_SERVER_SIDE_CURSORS")),
        reason="needs a session: prepared statements and rows held for the next round trip "
        "live on one server session, which a pooler in transaction mode does not keep; there "
        "publish() uses neither (tests/integration/test_pgbouncer.py covers it)",
    ),
]


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def _no_nudge(settings):
    # Without the nudge every publish runs the same statement.
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "NUDGE": False}


def _ids():
    return list(OutboxMessage.objects.order_by("id").values_list("id", flat=True))


def _stored(message_id):
    return OutboxMessage.objects.filter(id=message_id).values().get()


def _prepared_statements():
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE 'inbox_outbox_%%'")
        return {name for (name,) in cursor.fetchall()}


@pytest.mark.parametrize("prepare", [True, False])
def test_prepared_and_plain_inserts_store_the_same_row(settings, prepare):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "PREPARE_STATEMENTS": prepare}
    kwargs = {"key": "k", "headers": {"h": "é"}, "ttl": 60, "dedup_key": f"d-{prepare}"}
    with transaction.atomic():
        keyed = publish("t", {"n": 1, "when": dt.date(2026, 1, 2)}, **kwargs)
        plain = publish("t", {"n": 2})
    stored = _stored(keyed.id)
    # Due and expiring on the database's clock, which the relay compares them with.
    assert abs(stored.pop("available_at") - keyed.created_at) < dt.timedelta(seconds=2)
    assert stored.pop("expires_at") - keyed.created_at - dt.timedelta(seconds=60) < dt.timedelta(
        seconds=2
    )
    assert stored | {"lease_until": None} == {
        "id": keyed.id,
        "topic": "t",
        "key": "k",
        "sequence": 1,
        "epoch": Sequence.objects.get(topic="t", key="k").epoch,
        "voids": None,
        "payload": {"n": 1, "when": "2026-01-02"},
        "headers": {"h": "é"},
        "dedup_key": f"d-{prepare}",
        "status": "pending",
        "attempts": 0,
        "lease_owner": "",
        "lease_until": None,
        "created_at": keyed.created_at,
        "sent_at": None,
        "last_error": "",
    }
    assert keyed.epoch == _stored(keyed.id)["epoch"] > 0
    assert _stored(plain.id)["payload"] == {"n": 2} and _stored(plain.id)["headers"] == {}
    assert bool(_prepared_statements()) is prepare


def test_a_prepared_insert_survives_a_rollback_and_a_lost_one_is_a_clear_error(settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "PREPARE_STATEMENTS": True}
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        publish("t", {"n": 1})
        1 / 0  # noqa: B018
    assert _prepared_statements(), "PREPARE is not transactional: the rollback keeps it"
    with transaction.atomic():
        kept = publish("t", {"n": 2})

    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # what a pooler's DISCARD ALL does to the session
    lost = pytest.raises(StatementLost, match=r'"PREPARE_STATEMENTS"\] = False')
    with lost, transaction.atomic():
        Order.objects.create(customer="lost", amount=1)
        publish("t", {"n": 3})  # held: the commit fails, and takes the order with it
    with transaction.atomic():
        again = publish("t", {"n": 4})
    assert _ids() == [kept.id, again.id]
    assert not Order.objects.filter(customer="lost").exists()


def test_auto_mode_does_not_prepare_behind_a_transaction_pooler(settings, monkeypatch):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "PREPARE_STATEMENTS": None}
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    with transaction.atomic():
        publish("t", {"n": 1})
    assert not _prepared_statements()
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", False)
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX}  # new settings: decided again
    with transaction.atomic():
        publish("t", {"n": 2})
    assert _prepared_statements()


def test_a_held_row_is_visible_to_the_next_query_of_its_transaction():
    with transaction.atomic():
        sent = publish("t", {"n": 1})
        assert connection.execute_wrappers, "the row is held until the next round trip"
        assert OutboxMessage.objects.filter(id=sent.id).exists()
        assert not connection.execute_wrappers, "the hook removes itself once the row is sent"
    assert _ids() == [sent.id]


def test_rows_published_last_commit_with_the_transaction_and_in_order():
    with transaction.atomic():
        Order.objects.create(customer="c", amount=1)
        sent = [publish("t", {"n": n}, headers={"n": str(n)}) for n in range(50)]
    stored = list(OutboxMessage.objects.order_by("id").values_list("id", "payload", "headers"))
    assert stored == [(m.id, {"n": n}, {"n": str(n)}) for n, m in enumerate(sent)]


def test_a_rolled_back_transaction_leaves_no_held_row_behind():
    with pytest.raises(Boom), transaction.atomic():
        publish("t", {"n": 1})
        raise Boom
    assert not OutboxMessage.objects.exists(), "a query after the rollback sends nothing"
    with pytest.raises(Boom), transaction.atomic():
        publish("t", {"n": 2})
        raise Boom
    with transaction.atomic():
        kept = publish("t", {"n": 3})
    assert _ids() == [kept.id]


def test_a_savepoint_rollback_undoes_only_the_rows_published_inside_it():
    with transaction.atomic():
        outer = publish("t", {"n": 1})
        with pytest.raises(Boom), transaction.atomic():
            publish("t", {"n": 2})
            raise Boom
        with transaction.atomic():
            inner = publish("t", {"n": 3})
        last = publish("t", {"n": 4})
    assert _ids() == [outer.id, inner.id, last.id]


def test_a_users_execute_wrapper_is_left_as_it_was():
    seen = []

    def spy(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with transaction.atomic():
        with connection.execute_wrapper(spy):
            sent = publish("t", {"n": 1})
        assert connection.execute_wrappers[-1] is not spy  # Django popped the user's wrapper
        Order.objects.create(customer="c", amount=1)
    assert not connection.execute_wrappers
    assert _ids() == [sent.id]


def test_with_defer_inserts_off_the_row_is_written_at_once(settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "DEFER_INSERTS": False}
    with transaction.atomic():
        sent = publish("t", {"n": 1})
        assert not connection.execute_wrappers
    assert _ids() == [sent.id]


def test_outside_a_transaction_the_row_is_written_at_once():
    sent = publish("t", {"n": 1})
    assert not connection.execute_wrappers
    assert _ids() == [sent.id]


def test_a_row_held_on_a_connection_that_closes_is_never_sent_on_the_next():
    with pytest.raises(Boom), transaction.atomic():
        publish("t", {"n": 1})
        connection.close()
        raise Boom
    with transaction.atomic():
        kept = publish("t", {"n": 2})
    assert _ids() == [kept.id]
