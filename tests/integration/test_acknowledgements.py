"""Acknowledgements with ``multiple``: one ``basic.ack`` for a batch, never over a delivery
that is not durable yet. On the real broker."""

import kombu
import pytest

from inbox.consumer import acknowledge

pytestmark = pytest.mark.integration


def receive(names, broker_url, bind_queue, count):
    """``count`` deliveries held unacknowledged on one channel, and that channel's connection."""
    queue = bind_queue("ack.test")
    conn = kombu.Connection(broker_url)
    producer = conn.Producer()
    for i in range(count):
        producer.publish(
            {"n": i}, exchange=names.exchange, routing_key="ack.test", message_id=f"m{i}"
        )
    received: list[kombu.Message] = []
    channel = conn.channel()
    consumer = kombu.Consumer(channel, queues=[queue], on_message=received.append)
    consumer.qos(prefetch_count=count)
    consumer.consume()
    while len(received) < count:
        conn.drain_events(timeout=10)
    return conn, channel, received


def left_in_queue(names, broker_url):
    with kombu.Connection(broker_url) as conn:
        return conn.default_channel.queue_declare(names.queue, passive=True).message_count


def count_acks(channel, monkeypatch):
    sent = []
    real = channel.basic_ack

    def basic_ack(delivery_tag, multiple=False):
        sent.append((delivery_tag, multiple))
        return real(delivery_tag, multiple=multiple)

    monkeypatch.setattr(channel, "basic_ack", basic_ack)
    return sent


def test_a_durable_batch_is_acknowledged_with_one_basic_ack(
    names, broker_url, bind_queue, monkeypatch
):
    conn, channel, received = receive(names, broker_url, bind_queue, 5)
    sent = count_acks(channel, monkeypatch)
    acknowledge(received)
    assert sent == [(received[-1].delivery_tag, True)]
    assert all(message.acknowledged for message in received)
    conn.release()  # anything unacknowledged would go back to the queue now
    assert left_in_queue(names, broker_url) == 0


def test_a_multiple_ack_never_covers_a_delivery_not_yet_settled(
    names, broker_url, bind_queue, monkeypatch
):
    """A lane still handling the first delivery: the others are acked one by one."""
    conn, channel, received = receive(names, broker_url, bind_queue, 4)
    first, rest = received[0], received[1:]
    sent = count_acks(channel, monkeypatch)
    acknowledge(rest, unsettled=[first.delivery_tag])
    assert sent == [(message.delivery_tag, False) for message in rest]
    conn.release()
    assert left_in_queue(names, broker_url) == 1  # the unsettled one came back


def test_deliveries_below_every_unsettled_one_share_one_ack(
    names, broker_url, bind_queue, monkeypatch
):
    conn, channel, received = receive(names, broker_url, bind_queue, 5)
    sent = count_acks(channel, monkeypatch)
    acknowledge([received[0], received[1], received[3]], unsettled=[received[2].delivery_tag])
    assert sorted(sent) == [(received[1].delivery_tag, True), (received[3].delivery_tag, False)]
    conn.release()
    assert left_in_queue(names, broker_url) == 2  # the unsettled one and the last, never acked
