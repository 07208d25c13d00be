"""Plain Celery tasks sent through the outbox (issue 16): sent if and only if the sender's
transaction commits, in Celery's own protocol to Celery's own queue, run by an unchanged
Celery worker; with ``@exactly_once`` once in effect however often the broker delivers it
and when the worker is killed inside it. A task sent directly inside ``atomic()`` is logged.
"""

import json
import logging
import time

import kombu
import pytest
from django.db import transaction

from outbox import send_task
from outbox.models import OutboxMessage
from outbox.relay import Relay
from outbox.wire import ROUTE_HEADER
from tests.conftest import wait_until
from tests.testapp.models import Account
from tests.testapp.tasks import credit, credit_on_commit

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def task_queue(names, broker_url):
    """The Celery queue the test's workers consume, declared as a Celery worker declares it."""
    name = f"celery-{names.service}"
    queue = kombu.Queue(name, kombu.Exchange(name, "direct"), routing_key=name)
    with kombu.Connection(broker_url) as conn:
        queue(conn.default_channel).declare()
    yield name
    with kombu.Connection(broker_url) as conn:
        conn.default_channel.queue_delete(name)


def drain():
    relay = Relay()
    try:
        return relay.drain()
    finally:
        relay.close()


def balance(name):
    row = Account.objects.filter(name=name).first()
    return row.balance if row else None


def take(broker_url, queue):
    with kombu.Connection(broker_url) as conn:
        message = conn.default_channel.basic_get(queue, no_ack=True)
    assert message is not None, f"nothing in {queue}"
    return message


def test_a_task_sent_in_a_transaction_that_rolls_back_is_never_sent(task_queue, broker_url):
    with pytest.raises(RuntimeError), transaction.atomic():
        send_task("testapp.credit", ("ann", 5), queue=task_queue)
        credit_on_commit.apply_async(("ann", 5), queue=task_queue)
        raise RuntimeError("the business transaction fails")
    assert not OutboxMessage.objects.exists()
    assert drain() == 0
    with kombu.Connection(broker_url) as conn:
        assert conn.default_channel.basic_get(task_queue) is None


def test_a_committed_task_goes_out_in_celerys_own_protocol(task_queue, broker_url):
    with transaction.atomic():
        result = send_task("testapp.credit", ("ann", 5), {}, queue=task_queue)
    row = OutboxMessage.objects.get()
    assert row.topic == "celery:testapp.credit"
    assert row.headers["id"] == result.id and row.headers[ROUTE_HEADER] == task_queue
    assert drain() == 1
    message = take(broker_url, task_queue)
    headers = message.headers
    assert headers["task"] == "testapp.credit" and headers["id"] == result.id
    assert headers["lang"] == "py" and ROUTE_HEADER not in headers
    assert message.properties["correlation_id"] == result.id
    assert message.properties["content_type"] == "application/json"
    args, kwargs, embed = json.loads(message.body)
    assert (args, kwargs) == (["ann", 5], {}) and "callbacks" in embed


def test_a_countdown_is_delayed_delivery_held_by_the_outbox_not_the_worker(task_queue, broker_url):
    with transaction.atomic():
        result = credit_on_commit.apply_async(("bo", 2), queue=task_queue, countdown=1.5)
    row = OutboxMessage.objects.get()
    assert row.status == "scheduled" and row.headers["id"] == result.id
    assert row.headers["eta"] is None  # no worker holds it in memory until then
    assert drain() == 0
    time.sleep(2)
    assert drain() == 1
    assert take(broker_url, task_queue).headers["id"] == result.id


def test_options_the_outbox_cannot_carry_are_refused(task_queue):
    with pytest.raises(Exception, match="link"):
        credit_on_commit.apply_async(("bo", 2), link=credit.s())
    assert not OutboxMessage.objects.exists()


def test_a_task_delivered_three_times_and_its_worker_killed_inside_it_runs_once_in_effect(
    processes, names, broker_url, task_queue, tmp_path
):
    marker = str(tmp_path / "died-once")
    with transaction.atomic():
        dies = send_task("testapp.credit_or_die", ("cy", 7, marker), queue=task_queue)
        twice = credit_on_commit.apply_async(("dee", 3), queue=task_queue)
    assert drain() == 2
    # The broker delivers the second task twice more (a re-send, a redelivery).
    row = OutboxMessage.objects.get(headers__id=twice.id)
    for _ in range(2):
        OutboxMessage.objects.filter(pk=row.pk).update(status="pending")
        assert drain() == 1

    first = processes.worker("first")
    wait_until(lambda: first.poll() is not None, timeout=60, message="the worker killed itself")
    assert balance("cy") is None  # its transaction died with it
    processes.worker("second")
    wait_until(lambda: balance("cy") == 7, timeout=60, message="the task ran after the kill")
    wait_until(lambda: balance("dee") is not None, timeout=60, message="the second task ran")
    with kombu.Connection(broker_url) as conn:  # every copy consumed
        wait_until(
            lambda: conn.default_channel.queue_declare(task_queue, passive=True).message_count == 0,
            timeout=30,
            message="the task queue drained",
        )
    assert balance("dee") == 3 and balance("cy") == 7
    assert dies.id


def test_a_task_sent_directly_inside_atomic_is_logged(task_queue, caplog):
    caplog.set_level(logging.WARNING, logger="outbox.celery_tasks")
    credit.apply_async(("ed", 1), queue=task_queue)
    assert not caplog.records
    with transaction.atomic():
        credit.apply_async(("ed", 1), queue=task_queue)
    assert "sent directly from inside transaction.atomic()" in caplog.text
    assert "testapp.credit" in caplog.text


def test_a_send_task_with_countdown_and_eta_is_refused(task_queue):
    import datetime as dt

    from outbox import PublishError

    with pytest.raises(PublishError, match="countdown or eta"):
        send_task("testapp.credit", ("x", 1), countdown=1, eta=dt.datetime.now(dt.UTC))
    assert not OutboxMessage.objects.exists()


def _db_seconds(expression, row_id):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT extract(epoch from ({expression})) FROM outbox_message WHERE id = %s",
            [row_id],
        )
        return float(cursor.fetchone()[0])


def test_an_absolute_expiry_is_kept_as_given_not_converted_with_the_app_clock(task_queue):
    import datetime as dt

    expires = dt.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    with transaction.atomic():
        Account.objects.create(name="cy", balance=0)  # the transaction's now() starts here
        time.sleep(0.2)  # a TTL worked out on this host's clock would land 0.2 s early
        result = send_task("testapp.credit", ("cy", 1), queue=task_queue, expires=expires)
    row = OutboxMessage.objects.get()
    assert row.expires_at == expires
    assert row.headers["expires"] == expires.isoformat() and row.headers["id"] == result.id


def test_a_relative_expiry_counts_from_the_insert_on_the_database_clock(task_queue):
    import datetime as dt

    with transaction.atomic():
        now_due = send_task("testapp.credit", ("cy", 1), queue=task_queue, expires=5)
        delayed = send_task("testapp.credit", ("cy", 1), queue=task_queue, countdown=2, expires=5)
        eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
        at_eta = send_task("testapp.credit", ("cy", 1), queue=task_queue, eta=eta, expires=60)
    rows = {r.headers["id"]: r for r in OutboxMessage.objects.all()}
    assert _db_seconds("expires_at - available_at", rows[now_due.id].id) == pytest.approx(5)
    # the delayed row is due 2 s after its insert and expires 5 s after it: 3 s after due
    assert _db_seconds("expires_at - available_at", rows[delayed.id].id) == pytest.approx(3)
    # with an eta, the row expires when Celery's header says the task does
    header = dt.datetime.fromisoformat(rows[at_eta.id].headers["expires"])
    assert rows[at_eta.id].expires_at == header


def test_a_task_past_its_absolute_expiry_is_expired_by_the_relay_not_sent(task_queue, broker_url):
    import datetime as dt

    from django.db.models.functions import Now

    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    with transaction.atomic():
        send_task("testapp.credit", ("dee", 1), queue=task_queue, expires=expires)
    # the database's clock is what passes the expiry: move the row's expiry behind it
    OutboxMessage.objects.update(expires_at=Now() - dt.timedelta(seconds=1))
    assert drain() == 1
    assert OutboxMessage.objects.get().status == "expired"
    with kombu.Connection(broker_url) as conn:
        assert conn.default_channel.basic_get(task_queue) is None


def test_publish_takes_an_expiry_instant_or_a_ttl_not_both_and_never_a_naive_one():
    import datetime as dt

    from outbox import PublishError, publish

    with pytest.raises(PublishError, match="ttl or expires_at"):
        publish("test.effect", {}, ttl=5, expires_at=dt.datetime.now(dt.UTC))
    with pytest.raises(PublishError, match="expires_at must be an aware datetime"):
        publish("test.effect", {}, expires_at=dt.datetime(2030, 1, 1))
    assert not OutboxMessage.objects.exists()
