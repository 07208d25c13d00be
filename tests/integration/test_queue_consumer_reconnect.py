"""The demo's QueueConsumer when its broker connection drops (issue 14): it reconnects, to the
next node of its failover list first, and consumes on; every message is handled once; when no
node answers it gives up after its reconnect timeout instead of waiting forever."""

import json
import threading
import time

import amqp
import kombu
import kombu.exceptions
import pytest

from inbox import consumer, topology
from inbox.consumer import QueueConsumer
from inbox_outbox.cloudevents import CONTENT_TYPE
from tests.conftest import cloudevent
from tests.tcp_proxy import TcpProxy
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BROKER = ("127.0.0.1", 5672)
MESSAGES = 20


def send_all(broker_url, queue, count):
    """``count`` messages straight into the service queue; their ids."""
    ids = []
    with kombu.Connection(broker_url) as conn:
        topology.declare(conn)
        channel = conn.default_channel
        for i in range(count):
            body = cloudevent("test.effect", {"n": i})
            channel.basic_publish(
                amqp.Message(
                    json.dumps(body).encode(),
                    delivery_mode=2,
                    content_type=CONTENT_TYPE,
                    message_id=body["id"],
                    type="test.effect",
                ),
                exchange="",
                routing_key=queue,
            )
            ids.append(body["id"])
    return ids


def cut_after_first_batch(monkeypatch, proxy):
    """Cut ``proxy`` right after the first batch is durable, before it is acknowledged."""
    cuts = []

    def wrap(real):
        def processed(*args, **kwargs):
            result = real(*args, **kwargs)
            if not cuts:
                cuts.append(time.monotonic())
                proxy.cut()
            return result

        return processed

    monkeypatch.setattr(consumer, "process_batch", wrap(consumer.process_batch))
    monkeypatch.setattr(consumer, "process_delivery", wrap(consumer.process_delivery))
    return cuts


def handled_ids():
    return sorted(Effect.objects.filter(consumer="effect").values_list("message_id", flat=True))


def test_queue_consumer_moves_to_the_next_node_when_its_connection_drops(
    names, broker_url, monkeypatch, settings
):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "INBOX_BATCH_SIZE": 5, "PREFETCH_COUNT": 5}
    ids = send_all(broker_url, names.queue, MESSAGES)
    with TcpProxy(BROKER) as first, TcpProxy(BROKER) as second:
        cuts = cut_after_first_batch(monkeypatch, first)
        worker = QueueConsumer(f"{first.via(broker_url)};{second.via(broker_url)}")
        try:
            worker.drain(idle_timeout=2.0)
            assert cuts, "the first node was never cut off"
            assert worker.reconnects == 1
            assert second.connections == 1  # consuming through the second node now
        finally:
            worker.close()
    assert handled_ids() == sorted(ids)  # none lost, none handled twice


def test_queue_consumer_reconnects_to_its_only_node_once_it_is_back(
    names, broker_url, monkeypatch, settings
):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "INBOX_BATCH_SIZE": 5, "PREFETCH_COUNT": 5}
    ids = send_all(broker_url, names.queue, MESSAGES)
    with TcpProxy(BROKER) as proxy:
        cut_after_first_batch(monkeypatch, proxy)
        back = threading.Timer(3.0, proxy.restore)  # refused for 3 s, then accepted again
        back.start()
        worker = QueueConsumer(proxy.via(broker_url))
        try:
            started = time.monotonic()
            worker.drain(idle_timeout=2.0)
            assert time.monotonic() - started >= 3.0  # it waited for the node
            assert worker.reconnects == 1
        finally:
            back.cancel()
            worker.close()
    assert handled_ids() == sorted(ids)


def test_queue_consumer_gives_up_after_its_reconnect_timeout_when_no_node_answers(
    names, broker_url, monkeypatch, settings
):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "INBOX_BATCH_SIZE": 5, "PREFETCH_COUNT": 5}
    send_all(broker_url, names.queue, MESSAGES)
    with TcpProxy(BROKER) as first, TcpProxy(BROKER) as second:
        second.cut()  # refuses from the start
        cut_after_first_batch(monkeypatch, first)
        worker = QueueConsumer(
            f"{first.via(broker_url)};{second.via(broker_url)}", reconnect_timeout=4
        )
        started = time.monotonic()
        with pytest.raises(kombu.exceptions.OperationalError):
            worker.drain(idle_timeout=2.0)
        waited = time.monotonic() - started
        worker.close()
    assert 4 <= waited < 4 + 15  # the timeout, plus at most a connect timeout or two
    assert len(handled_ids()) >= 5  # the first batch, durable before the cut


@pytest.mark.timeout(60)
def test_queue_consumer_raises_a_channel_error_instead_of_reconnecting(names, broker_url, settings):
    """A queue of another type is no dropped connection: reconnecting would not cure it."""
    with kombu.Connection(broker_url) as conn:
        kombu.Queue(names.queue, durable=True)(conn.default_channel).declare()  # classic
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "QUEUE_TYPE": "quorum"}
    worker = QueueConsumer(broker_url)
    try:
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            worker.drain(idle_timeout=1.0)
        assert worker.reconnects == 0
    finally:
        worker.close()
