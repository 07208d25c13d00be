"""``manage.py inbox_topology`` against the real broker (issue 14): it shows what the service
declares and what the broker has, changes nothing unless asked, fails ``--check`` for a
missing or different queue or a stale binding, and ``--prune`` unbinds a removed handler's
topic so that its messages stop arriving."""

import json

import amqp
import kombu
import pytest
from django.core.management import CommandError, call_command

from inbox import topology
from inbox.models import QueueBinding
from inbox.registry import registry
from tests.conftest import cloudevent

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def run(*args):
    from io import StringIO

    out = StringIO()
    call_command("inbox_topology", *args, stdout=out)
    return out.getvalue()


def queue_exists(broker_url, name):
    with kombu.Connection(broker_url) as conn:
        try:
            conn.channel().queue_declare(name, passive=True)
        except amqp.exceptions.NotFound:
            return False
    return True


def publish_raw(broker_url, exchange, topic):
    body = cloudevent(topic, {"n": 1})
    with kombu.Connection(broker_url) as conn:
        channel = conn.channel()
        channel.basic_publish(
            amqp.Message(json.dumps(body).encode(), message_id=body["id"]),
            exchange=exchange,
            routing_key=topic,
        )


def depth(broker_url, name):
    with kombu.Connection(broker_url) as conn:
        return conn.channel().queue_declare(name, passive=True).message_count


def test_showing_the_topology_changes_nothing_on_the_broker(names, broker_url):
    out = run()
    assert f"queue {names.queue}: a classic queue with no x- arguments -- missing" in out
    assert f"bound topics: {', '.join(sorted(registry.topics()))}" in out
    assert not queue_exists(broker_url, names.queue)
    with pytest.raises(CommandError, match="missing"):
        run("--check")


def test_a_declared_topology_checks_clean(names, broker_url):
    out = run("--declare", "--check")
    assert f"queue {names.queue}: a classic queue with no x- arguments -- ok (0 messages" in out
    assert f"exchange {names.exchange}: topic, durable -- ok" in out


def test_check_names_a_queue_whose_delivery_limit_differs(names, broker_url, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "QUEUE_TYPE": "quorum", "DELIVERY_LIMIT": 5}
    run("--declare")
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "DELIVERY_LIMIT": 7}
    with pytest.raises(CommandError) as raised:
        run("--check")
    assert f"queue {names.queue}: mismatch" in str(raised.value)
    assert "x-delivery-limit" in str(raised.value)
    # Still the old limit: checking declared nothing.
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "DELIVERY_LIMIT": 5}
    run("--check")


def test_a_removed_handlers_topic_is_a_stale_binding_and_prune_stops_its_messages(
    names, broker_url
):
    with kombu.Connection(broker_url) as conn:
        topology.declare(conn)
    # An earlier release had a handler for "test.removed"; its worker bound and recorded it.
    QueueBinding.objects.create(queue=names.queue, topic="test.removed")
    with kombu.Connection(broker_url) as conn:
        channel = conn.channel()
        channel.queue_bind(names.queue, names.exchange, routing_key="test.removed")
    publish_raw(broker_url, names.exchange, "test.removed")
    assert depth(broker_url, names.queue) == 1

    with pytest.raises(CommandError, match=r"bound to topics no handler declares: test\.removed"):
        run("--check")
    out = run("--prune", "--check")
    assert "unbound: test.removed" in out
    assert not QueueBinding.objects.filter(topic="test.removed").exists()
    publish_raw(broker_url, names.exchange, "test.removed")
    assert depth(broker_url, names.queue) == 1  # the second one went nowhere
    publish_raw(broker_url, names.exchange, "test.effect")
    assert depth(broker_url, names.queue) == 2  # the live topics still arrive


def test_a_declare_records_the_topics_it_bound(names, broker_url):
    with kombu.Connection(broker_url) as conn:
        topology.declare(conn)
    recorded = set(QueueBinding.objects.filter(queue=names.queue).values_list("topic", flat=True))
    assert recorded == set(registry.topics())
    assert {"test.effect", "test.fuzz"} <= recorded
