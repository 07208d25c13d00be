"""Quorum service queues on the real broker (issue 14, topology): the queue is declared with a
delivery limit and an at-least-once dead-letter queue; redeclaring is a no-op and a queue of
another type is a clear error; a database outage spends none of the delivery limit; what is
dead-lettered is counted and can be moved back; a full quorum queue costs the relay no attempt.
"""

import json
import time

import amqp
import kombu
import pytest
from amqp import spec
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import OperationalError
from django.urls import reverse

from inbox import consumer, topology
from inbox.consumer import QueueConsumer
from inbox.models import InboxMessage
from inbox.processing import _row_message
from inbox_outbox.cloudevents import CONTENT_TYPE
from outbox import publish
from outbox.models import OutboxMessage
from outbox.relay import Relay
from tests.conftest import cloudevent
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LIMIT = 2


@pytest.fixture
def quorum(names, settings):
    settings.INBOX_OUTBOX = {
        **settings.INBOX_OUTBOX,
        "QUEUE_TYPE": "quorum",
        "DELIVERY_LIMIT": LIMIT,
    }
    return names


@pytest.fixture
def amqp_channel(broker_url):
    url = kombu.Connection(broker_url)
    conn = amqp.Connection(
        f"{url.hostname or '127.0.0.1'}:{url.port or 5672}",
        userid=url.userid or "guest",
        password=url.password or "guest",
        virtual_host=url.virtual_host or "/",
    )
    conn.connect()
    yield conn.channel()
    conn.collect()


def declare_topology(broker_url):
    with kombu.Connection(broker_url) as conn:
        topology.declare(conn)


def depth(channel, queue):
    return channel.queue_declare(queue, passive=True).message_count


def send(channel, queue, *, topic="test.effect", data=None):
    body = cloudevent(topic, data or {})
    channel.basic_publish(
        amqp.Message(
            json.dumps(body).encode(),
            delivery_mode=2,
            content_type=CONTENT_TYPE,
            message_id=body["id"],
            type=topic,
        ),
        exchange="",
        routing_key=queue,
    )
    return body["id"]


def get(channel, queue, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = channel.basic_get(queue)
        if message is not None:
            return message
        time.sleep(0.05)
    return None


def nack(channel, message):
    channel.send_method(spec.Basic.Nack, "Lbb", (message.delivery_tag, False, True))


def dead_letter_one(channel, queue):
    """Send one message and return it past the delivery limit: it ends dead-lettered."""
    message_id = send(channel, queue)
    for _ in range(LIMIT + 1):
        nack(channel, get(channel, queue))
    return message_id


def wait_depth(channel, queue, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while depth(channel, queue) != n and time.monotonic() < deadline:
        time.sleep(0.05)
    return depth(channel, queue)


def test_a_quorum_service_queue_is_declared_with_a_delivery_limit_and_a_dead_letter_queue(
    quorum, broker_url, amqp_channel
):
    declare_topology(broker_url)
    dead = f"{quorum.queue}.dead-letter"
    # The same arguments again are accepted (the broker compares them), another type is not.
    amqp_channel.queue_declare(
        quorum.queue, durable=True, auto_delete=False, arguments=topology.queue_arguments()
    )
    assert topology.queue_arguments() == {
        "x-queue-type": "quorum",
        "x-delivery-limit": LIMIT,
        "x-dead-letter-exchange": dead,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    # And they act: a message returned past the limit is in the dead-letter queue.
    message_id = dead_letter_one(amqp_channel, quorum.queue)
    assert wait_depth(amqp_channel, dead, 1) == 1
    assert depth(amqp_channel, quorum.queue) == 0
    moved = get(amqp_channel, dead)
    assert moved.properties["message_id"] == message_id
    assert moved.headers["x-death"][0]["reason"] == "delivery_limit"


def test_declaring_the_topology_again_is_a_no_op(quorum, broker_url, amqp_channel):
    declare_topology(broker_url)
    send(amqp_channel, quorum.queue)
    declare_topology(broker_url)
    declare_topology(broker_url)
    assert wait_depth(amqp_channel, quorum.queue, 1) == 1


def test_an_existing_classic_queue_of_the_same_name_is_a_clear_error_naming_both_and_the_way_out(
    quorum, broker_url, amqp_channel
):
    amqp_channel.queue_declare(quorum.queue, durable=True, auto_delete=False)  # classic
    with pytest.raises(topology.TopologyMismatch) as caught:
        declare_topology(broker_url)
    text = str(caught.value)
    assert repr(quorum.queue) in text
    assert "Asked for: a quorum queue with x-dead-letter-exchange" in text
    assert f"x-delivery-limit={LIMIT}" in text
    assert "inequivalent arg" in text  # the broker's reply names an argument that differs
    assert "docs/operations.md" in text
    # The existing queue is untouched.
    assert amqp_channel.queue_declare(quorum.queue, passive=True).queue == quorum.queue


def test_a_database_outage_longer_than_the_delivery_limit_holds_the_deliveries_and_dead_letters_nothing(
    quorum, broker_url, amqp_channel, monkeypatch
):
    declare_topology(broker_url)
    ids = [send(amqp_channel, quorum.queue) for _ in range(3)]
    outage = {"left": 3 * (LIMIT + 2)}  # more failed tries than the limit allows returns
    real_batch, real_delivery = consumer.process_batch, consumer.process_delivery

    def down_then(real):
        def call(*args, **kwargs):
            if outage["left"] > 0:
                outage["left"] -= 1
                raise OperationalError("the database system is shutting down")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(consumer, "process_batch", down_then(real_batch))
    monkeypatch.setattr(consumer, "process_delivery", down_then(real_delivery))
    monkeypatch.setattr(consumer, "DATABASE_DOWN_PAUSE", 0.01)
    monkeypatch.setattr(consumer, "DATABASE_DOWN_MAX_PAUSE", 0.02)
    sent = []
    real_send = amqp.Channel.send_method

    def spy(self, sig, *args, **kwargs):
        sent.append(sig)
        return real_send(self, sig, *args, **kwargs)

    monkeypatch.setattr(amqp.Channel, "send_method", spy)

    worker = QueueConsumer(broker_url)
    try:
        assert worker.drain(idle_timeout=3.0) == 3
    finally:
        worker.close()
    assert outage["left"] == 0
    assert spec.Basic.Nack not in sent and spec.Basic.Reject not in sent  # held, never returned
    assert depth(amqp_channel, f"{quorum.queue}.dead-letter") == 0
    assert sorted(
        Effect.objects.filter(consumer="effect").values_list("message_id", flat=True)
    ) == sorted(ids)
    assert set(InboxMessage.objects.values_list("delivery_count", flat=True)) == {None}


def test_a_delivery_given_back_after_the_hold_goes_back_with_nack_not_reject(
    quorum, broker_url, amqp_channel, monkeypatch, settings
):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "INBOX_HOLD_SECONDS": 0}
    declare_topology(broker_url)
    send(amqp_channel, quorum.queue)

    def down(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(consumer, "process_delivery", down)
    monkeypatch.setattr(consumer, "DATABASE_DOWN_PAUSE", 0)
    sent = []
    real_send = amqp.Channel.send_method

    def spy(self, sig, *args, **kwargs):
        sent.append(sig)
        return real_send(self, sig, *args, **kwargs)

    monkeypatch.setattr(amqp.Channel, "send_method", spy)
    worker = QueueConsumer(broker_url)
    try:
        worker.drain(idle_timeout=2.0)
    finally:
        worker.close()
    assert spec.Basic.Nack in sent
    assert spec.Basic.Reject not in sent
    monkeypatch.undo()
    # Never lost: back in the queue, or (RabbitMQ 3.x counts nacks against the limit, which is
    # why deliveries are held instead) dead-lettered after LIMIT returns.
    dead = f"{quorum.queue}.dead-letter"
    time.sleep(0.5)
    assert depth(amqp_channel, quorum.queue) + depth(amqp_channel, dead) == 1
    assert not InboxMessage.objects.exists()


def test_the_brokers_delivery_count_lands_in_the_inbox_row_and_the_message(
    quorum, broker_url, amqp_channel, monkeypatch
):
    declare_topology(broker_url)
    message_id = send(amqp_channel, quorum.queue)
    nack(amqp_channel, get(amqp_channel, quorum.queue))  # one earlier delivery, given back
    worker = QueueConsumer(broker_url)
    try:
        assert worker.drain(idle_timeout=3.0) == 1
    finally:
        worker.close()
    rows = InboxMessage.objects.filter(message_id=message_id)
    assert set(rows.values_list("delivery_count", flat=True)) == {1}
    # What a handler is given when the stored row runs again (a retry, a waiting successor).
    assert {_row_message(row, 2).delivery_count for row in rows} == {1}


def test_dead_letters_are_counted_by_inbox_status_and_the_admin_and_moved_back_by_the_command(
    quorum, broker_url, amqp_channel, capsys, client
):
    declare_topology(broker_url)
    dead = f"{quorum.queue}.dead-letter"
    message_id = dead_letter_one(amqp_channel, quorum.queue)
    assert wait_depth(amqp_channel, dead, 1) == 1

    call_command("inbox_status", "--json")
    assert json.loads(capsys.readouterr().out)["dead_letters"] == 1
    User.objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(User.objects.get(username="op"))
    page = client.get(reverse("admin:inbox_inboxmessage_changelist"))
    assert "dead-letter queue: <strong>1</strong>" in page.text

    call_command("inbox_dead_letters", "--requeue")
    out = capsys.readouterr().out
    assert f"dead-letter queue {dead}: 1" in out and "moved back to the service queue: 1" in out
    assert depth(amqp_channel, dead) == 0

    worker = QueueConsumer(broker_url)
    try:
        assert worker.drain(idle_timeout=3.0) == 1
    finally:
        worker.close()
    assert (
        list(Effect.objects.filter(consumer="effect").values_list("message_id", flat=True))
        == [message_id] * 1
    )
    # Moved back with a fresh count: the old queue's count was dropped from its headers.
    assert set(InboxMessage.objects.values_list("delivery_count", flat=True)) == {None}


def drain_relay(**kwargs):
    relay = Relay()
    try:
        relay.drain(**kwargs)
    finally:
        relay.close()
    return relay


def test_a_relay_nack_from_a_full_quorum_queue_charges_no_attempt_and_backs_off(
    names, broker_url, amqp_channel, settings
):
    exchange = kombu.Exchange(names.exchange, "topic", durable=True)
    full = kombu.Queue(
        names.queue,
        exchange=exchange,
        routing_key="full.#",
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-max-length": 1,
            "x-overflow": "reject-publish",
        },
    )
    with kombu.Connection(broker_url) as conn:
        full(conn.default_channel).declare()
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "RELAY_MAX_ATTEMPTS": 1}
    # A quorum queue applies reject-publish once it is over its length (RabbitMQ 3.10 accepts
    # what arrives while it is not yet over): fill it one confirmed message at a time.
    filled = []
    for n in range(5):
        filled.append(publish("full.event", {"fill": n}))
        drain_relay(max_batches=2)
        if OutboxMessage.objects.filter(id=filled[-1].id, status="sent").exists():
            continue
        break
    OutboxMessage.objects.filter(id__in=[m.id for m in filled]).delete()
    before = amqp_channel.queue_declare(names.queue, passive=True).message_count
    assert before >= 1

    rest = [publish("full.event", {"n": n}) for n in (1, 2)]
    relay = drain_relay(max_batches=5)
    for message in rest:
        row = OutboxMessage.objects.get(id=message.id)
        # RELAY_MAX_ATTEMPTS is 1: one charge would have made it dead.
        assert (row.status, row.attempts, row.lease_owner) == ("pending", 0, "")
        assert row.available_at > row.created_at  # backed off, not claimed again at once
    assert relay.stats["refused"] >= 2 and relay.stats["failed"] == 0
    assert amqp_channel.queue_declare(names.queue, passive=True).message_count == before

    # When the consumers catch up, the refused ones go out.
    amqp_channel.queue_purge(names.queue)
    OutboxMessage.objects.filter(id__in=[m.id for m in rest]).update(
        available_at=rest[0].created_at
    )
    drain_relay(max_batches=3)
    sent = OutboxMessage.objects.filter(id__in=[m.id for m in rest], status="sent")
    assert sent.count() >= 1 and not OutboxMessage.objects.filter(attempts__gt=1).exists()


def test_a_celery_worker_declares_the_quorum_topology_and_handles_from_it(
    processes, quorum, broker_url, amqp_channel
):
    from tests.integration.test_workers import Sender, start_workers

    start_workers(processes, broker_url, quorum, QUEUE_TYPE="quorum", DELIVERY_LIMIT=str(LIMIT))
    assert depth(amqp_channel, f"{quorum.queue}.dead-letter") == 0  # declared with it
    sender = Sender(quorum)
    try:
        ids = [sender.event("test.effect", {"n": n}) for n in range(5)]
    finally:
        sender.close()
    deadline = time.monotonic() + 30
    effects = Effect.objects.filter(consumer="effect")
    while effects.count() < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(effects.values_list("message_id", flat=True)) == sorted(ids)


def test_a_worker_asked_for_quorum_on_a_classic_queue_stops_with_the_clear_error(
    processes, names, broker_url, amqp_channel
):
    amqp_channel.queue_declare(names.queue, durable=True, auto_delete=False)  # classic
    worker = processes.worker("mismatch", QUEUE_TYPE="quorum")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log = worker.log_path.read_text(errors="replace")
        if "TopologyMismatch" in log or "already has a queue" in log or worker.poll() is not None:
            break
        time.sleep(0.2)
    log = worker.log_path.read_text(errors="replace")
    assert f"The broker already has a queue {names.queue!r}" in log
    assert "docs/operations.md" in log
    assert worker.wait(timeout=30) != 0  # Celery stops: an unrecoverable error, not a retry loop
    assert amqp_channel.queue_declare(names.queue, passive=True).consumer_count == 0


def test_a_real_worker_holds_its_deliveries_through_a_database_outage_longer_than_the_limit(
    processes, quorum, broker_url, amqp_channel
):
    """The lanes' path: the worker's database goes away for 10 s, during which returning the
    deliveries every second (the old requeue after a 1 s pause) would have dead-lettered them
    past DELIVERY_LIMIT 2. Held instead, they are handled once the database is back."""
    from urllib.parse import urlsplit

    from tests.conftest import test_database_url
    from tests.integration.test_workers import Sender, start_workers
    from tests.tcp_proxy import TcpProxy

    database = test_database_url()
    with TcpProxy(("127.0.0.1", urlsplit(database).port or 5432)) as proxy:
        [worker] = start_workers(
            processes,
            broker_url,
            quorum,
            DATABASE_URL=proxy.via(database),
            INBOX_OUTBOX_QUEUE_TYPE='"quorum"',
            INBOX_OUTBOX_DELIVERY_LIMIT=str(LIMIT),
            INBOX_OUTBOX_INBOX_CONCURRENCY="2",
        )
        proxy.cut()
        sender = Sender(quorum)
        try:
            ids = [sender.event("test.effect", {"n": n}) for n in range(10)]
        finally:
            sender.close()
        time.sleep(10)
        dead = f"{quorum.queue}.dead-letter"
        assert depth(amqp_channel, dead) == 0
        assert b"holding" in worker.log_path.read_bytes()
        proxy.restore()
        deadline = time.monotonic() + 60
        effects = Effect.objects.filter(consumer="effect")
        while effects.count() < len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(effects.values_list("message_id", flat=True)) == sorted(ids)
    assert depth(amqp_channel, dead) == 0
    assert b"returning" not in worker.log_path.read_bytes()  # never given back
