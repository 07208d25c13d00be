"""A committed publish reaches RabbitMQ in the wire format; a rolled-back one does not."""

import json

import kombu
import pytest
from django.db import transaction

from outbox import publish
from outbox.models import OutboxMessage
from outbox.relay import Relay
from tests.conftest import read_queue

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


class Boom(Exception):
    pass


def test_committed_message_reaches_the_broker_and_rolled_back_one_does_not(names, broker_url):
    exchange = kombu.Exchange(names.exchange, "topic", durable=True)
    queue = kombu.Queue(names.queue, exchange=exchange, routing_key="orders.placed", durable=True)
    with kombu.Connection(broker_url) as conn:
        queue(conn.default_channel).declare()
    with transaction.atomic():
        sent = publish("orders.placed", {"order_id": 1}, key="c1")
    with pytest.raises(Boom), transaction.atomic():
        publish("orders.placed", {"order_id": 2})
        raise Boom

    relay = Relay()
    assert relay.drain() == 1
    relay.close()

    [delivered] = read_queue(broker_url, queue)
    body = json.loads(delivered.body)
    assert body["id"] == str(sent.id)
    assert body["data"] == {"order_id": 1}
    assert body["specversion"] == "1.0" and body["type"] == "orders.placed"
    assert body["partitionkey"] == "c1" and body["sequence"] == "1"
    assert delivered.properties["message_id"] == str(sent.id)
    assert delivered.content_type == "application/cloudevents+json"
    assert OutboxMessage.objects.get(id=sent.id).status == "sent"
