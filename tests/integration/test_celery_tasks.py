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
