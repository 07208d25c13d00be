"""Rows the wire cannot carry, and a broker that stops answering: the relay charges the row
that is bad, never its batch, and never waits on the broker without a timeout."""

import threading
import time
from collections import Counter

import kombu
import pytest
from django.db import connections
from django.utils import timezone

from outbox import publish
from outbox.exceptions import BrokerUnavailable
from outbox.models import OutboxMessage
from outbox.publisher import AmqpPublisher
from outbox.relay import Relay
from tests.conftest import read_queue
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

#: Rows an older version's publish() accepted and AMQP cannot carry: written straight to
#: the table, as they would be found after an upgrade.
UNENCODABLE = {
    "a topic over 255 bytes of UTF-8": {"topic": "wire." + "é" * 200},
    "a header name over 255 bytes": {"headers": {"h" * 300: "x"}},
    "a header integer past 64 bits": {"headers": {"big": 2**64}},
}


@pytest.fixture
def queue(bind_queue, settings):
    # Backoff long enough that a failed row is not retried within the test.
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "RELAY_BACKOFF_BASE": 3600.0}
    return bind_queue("wire.#")


def unencodable(what: str, **extra) -> OutboxMessage:
    fields = {"topic": "wire.event", "payload": {"bad": what}, **UNENCODABLE[what], **extra}
    return OutboxMessage.objects.create(**fields)


def drain() -> Relay:
    relay = Relay()
    try:
        relay.drain()
    finally:
        relay.close()
    return relay


@pytest.mark.parametrize("what", list(UNENCODABLE))
def test_a_row_amqp_cannot_carry_fails_alone_and_its_batch_goes_out_once(
    names, queue, broker_url, what
):
    before = publish("wire.event", {"n": 1})
    bad = unencodable(what)
    after = publish("wire.event", {"n": 2})

    drain()
    drain()  # a second pass re-sends nothing: the good rows were settled the first time

    delivered = Counter(m.properties["message_id"] for m in read_queue(broker_url, queue))
    assert delivered == {str(before.id): 1, str(after.id): 1}
    row = OutboxMessage.objects.get(id=bad.id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "cannot be encoded" in row.last_error


def test_a_row_that_never_encodes_ends_dead_and_only_then_its_key_moves_on(
    names, queue, broker_url, settings
):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "RELAY_MAX_ATTEMPTS": 2}
    bad = unencodable("a header integer past 64 bits", key="k", sequence=1)
    successor = OutboxMessage.objects.create(
        topic="wire.event", payload={"n": 2}, key="k", sequence=2
    )
    drain()
    row = OutboxMessage.objects.get(id=bad.id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert OutboxMessage.objects.get(id=successor.id).status == "pending"
    assert read_queue(broker_url, queue) == []  # never ahead of its head on the wire

    OutboxMessage.objects.filter(id=bad.id).update(available_at=timezone.now())
    drain()  # the second failure is the last: dead, announced void, then the key moves on
    row = OutboxMessage.objects.get(id=bad.id)
    assert (row.status, row.attempts) == ("dead", 2)
    assert OutboxMessage.objects.get(id=successor.id).status == "sent"
    void = OutboxMessage.objects.get(voids=bad.id)
    assert (void.key, void.sequence, void.status) == ("k", 1, "sent")
    assert [m.properties["message_id"] for m in read_queue(broker_url, queue)] == [
        str(void.id),
        str(successor.id),
    ]


def test_a_broker_that_stops_answering_cannot_hang_the_relay(names, queue, broker_url, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "RELAY_CONFIRM_TIMEOUT": 1.0}
    port = kombu.Connection(broker_url).port or 5672
    with TcpProxy(("127.0.0.1", port)) as proxy:
        publisher = AmqpPublisher(
            proxy.via(broker_url),
            exchange=names.exchange,
            source=names.service,
            confirm_timeout=1.0,
        )
        publisher._ensure_channel()  # connected while the broker still answers
        for n in range(3):
            publish("wire.event", {"n": n})
        proxy.freeze()  # the TCP connection stays up; nothing comes back
        relay = Relay(publisher=publisher)
        outcome: list = []

        def run():
            try:
                relay.drain()
                outcome.append("drained")
            except BrokerUnavailable as exc:
                outcome.append(exc)
            finally:
                relay.close()
                outcome.append("closed")
                connections.close_all()

        started = time.monotonic()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=20)
        hung = thread.is_alive()
        proxy.thaw()
        proxy.cut()  # releases a hung relay, so that the test can end either way
        thread.join(timeout=10)
    assert not hung, "the relay was still waiting for the broker after 20 s"
    assert isinstance(outcome[0], BrokerUnavailable) and outcome[-1] == "closed"
    assert time.monotonic() - started < 20
    # Nothing was confirmed, so nothing is charged: the rows wait for the broker.
    rows = OutboxMessage.objects.filter(topic="wire.event")
    assert set(rows.values_list("status", "attempts", "lease_owner")) == {("pending", 0, "")}


def test_a_publisher_listing_nodes_moves_to_the_next_that_answers_when_its_node_goes(
    names, queue, broker_url
):
    real = kombu.Connection(broker_url)
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"  # nothing listens there
    with TcpProxy(("127.0.0.1", real.port or 5672)) as proxy:
        first = proxy.via(broker_url)
        publisher = AmqpPublisher(
            f"{first};{down};{broker_url}",
            exchange=names.exchange,
            source=names.service,
            confirm_timeout=5.0,
        )
        relay = Relay(publisher=publisher)
        try:
            publish("wire.event", {"n": 1})
            relay.drain()
            assert publisher._connection.port == kombu.Connection(first).port
            proxy.cut()  # the first node dies, and stays dead
            publish("wire.event", {"n": 2})
            with pytest.raises(BrokerUnavailable):
                relay.drain()  # the connection it had is gone: the batch is not confirmed
            relay.drain()  # reconnects: past the first node and the one that is down
            assert publisher._connection.port == (real.port or 5672)
        finally:
            relay.close()
    assert Counter(OutboxMessage.objects.values_list("status", flat=True)) == {"sent": 2}
    assert len(read_queue(broker_url, queue)) == 2


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
