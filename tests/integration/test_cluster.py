"""On a real three-node RabbitMQ cluster (bin/rabbitmq-cluster, tests/cluster.py): a quorum
service queue declared through the library is replicated on every node, and a relay and a
worker given the nodes' URLs keep working when the node they are connected to stops."""

import json

import pytest
from django.db import transaction

from inbox import topology
from inbox_outbox.broker import connect
from outbox import publish
from outbox.models import OutboxMessage
from tests.cluster import NODES, node_name
from tests.conftest import wait_until
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def broker_url(cluster):
    """The test's broker is the cluster (the names fixture cleans up there too)."""
    return cluster.url()


@pytest.fixture
def quorum(names, settings, broker_url):
    settings.INBOX_OUTBOX = {
        **settings.INBOX_OUTBOX,
        "QUEUE_TYPE": "quorum",
        "BROKER_URL": broker_url,
    }
    return names


def test_a_quorum_queue_declared_on_one_node_has_members_on_all_three(cluster, quorum):
    with connect(cluster.url(1)) as conn:
        topology.declare(conn)
    for name in (quorum.queue, f"{quorum.queue}.dead-letter"):
        queue = cluster.queue(name, node=2)  # as another node sees it
        assert queue["type"] == "quorum"
        assert sorted(queue["members"]) == [node_name(n) for n in NODES]
    assert cluster.leader(quorum.queue) == 1  # placed on the node that declared it


def connections(cluster, node):
    """Client connections to ``node`` (the CLI lists the whole cluster's)."""
    rows = json.loads(cluster.ctl(2, "list_connections", "port", "--formatter", "json") or "[]")
    return sum(row["port"] == 5700 + node for row in rows)


def consumers(cluster, queue, node):
    rows = json.loads(cluster.ctl(node, "list_queues", "name", "consumers", "--formatter", "json"))

    return sum(row["consumers"] for row in rows if row["name"] == queue)


def publish_many(count, start):
    for n in range(start, start + count):
        with transaction.atomic():
            publish("test.effect", {"n": n}, key=f"k{n % 10}")


def handled():
    return Effect.objects.filter(consumer="effect").values("message_id").distinct().count()


def test_a_relay_and_a_worker_listing_the_nodes_carry_on_when_their_node_stops(
    cluster_nodes, quorum, processes
):
    cluster = cluster_nodes
    env = {"QUEUE_TYPE": "quorum", "CELERY_BROKER_URL": cluster.url(1, 2, 3)}
    processes.worker("worker", **env)
    processes.relay("relay", **env)
    wait_until(lambda: consumers(cluster, quorum.queue, 2) >= 1, timeout=60, message="a consumer")
    publish_many(100, 0)
    wait_until(lambda: handled() >= 100, timeout=60, message="the first 100 handled")
    # Both hold their connections on the first node of the list; nothing is on the others.
    assert connections(cluster, 1) >= 2
    assert (connections(cluster, 2), connections(cluster, 3)) == (0, 0)

    cluster.stop_app(1)  # closes every connection to it; its queue members stop
    publish_many(100, 100)
    wait_until(
        lambda: handled() >= 200,
        timeout=90,
        message=lambda: f"the next 100 handled through the other nodes ({handled()} so far)",
    )
    # The worker's Celery connection may restart once more after its inbox consumer moved (its
    # own heartbeat to the stopped node fails later): what matters is that it settles on
    # exactly one consumer again, on the nodes that are left.
    wait_until(
        lambda: consumers(cluster, quorum.queue, 2) == 1,
        timeout=60,
        message=lambda: f"one consumer again ({consumers(cluster, quorum.queue, 2)} now)",
    )
    wait_until(
        lambda: connections(cluster, 2) + connections(cluster, 3) >= 2,
        timeout=60,
        message="the relay and the worker connected to the other nodes",
    )
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {"sent"}
    effects = list(Effect.objects.filter(consumer="effect").values_list("message_id", flat=True))
    assert len(effects) == len(set(effects)) == 200  # each once
