"""Broker nodes lost under load, on the three-node cluster (bin/rabbitmq-cluster).

With quorum queues, two relays and two workers connected to different nodes (each lists all
three, starting from its own) and at least 3,000 keyed messages flowing, a node is killed,
restarted or cut off; then the books are checked from the databases alone, as in the rest of
the suite (tests/faults/harness.py: nothing lost, one effect per message and consumer, per-key
order, nothing stuck).
"""

import time

import pytest

from tests.conftest import wait_until
from tests.faults.harness import Producer, System, check_books, describe, settle
from tests.faults.test_scenarios import effects_so_far, wait_consuming

pytestmark = [
    pytest.mark.faults,
    pytest.mark.cluster,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(600),
]

N = 3000
#: Where each process connects first (it fails over to the others in this order).
WORKER_NODES = ((1, 2, 3), (2, 3, 1))
RELAY_NODES = ((3, 1, 2), (2, 1, 3))


@pytest.fixture
def broker_url(cluster):
    """The suite's broker is the cluster (names and consumer counts are read there)."""
    return cluster.url()


@pytest.fixture
def system(processes, cluster_nodes):
    return System(processes, env={"QUEUE_TYPE": "quorum"})


def start_flow(system, cluster, names, broker_url, **producer):
    """Two workers and two relays on different nodes, and a producer of keyed messages."""
    for order in WORKER_NODES:
        system.worker(CELERY_BROKER_URL=cluster.url(*order))
    wait_consuming(broker_url, names.queue, len(WORKER_NODES))
    for order in RELAY_NODES:
        system.relay(CELERY_BROKER_URL=cluster.url(*order))
    flow = Producer(N, keys=40, **producer)
    flow.start()
    return flow


def progress_beyond(count, *, timeout=120):
    wait_until(
        lambda: effects_so_far() > count,
        timeout=timeout,
        message=lambda: f"more than {count} effects: {describe()}",
    )


def test_the_node_holding_the_queue_leader_killed_mid_flow_and_restarted(
    system, cluster_nodes, names, broker_url
):
    """1. SIGKILL of the Erlang VM of the node that holds the service queue's leader while
    messages flow; the other two elect a new leader and carry on; the node comes back."""
    cluster = cluster_nodes
    producer = start_flow(system, cluster, names, broker_url, pace=0.001)
    progress_beyond(500)
    leader = cluster.leader(names.queue)
    cluster.kill(leader)
    before = effects_so_far()
    progress_beyond(before + 300)  # handled while the node is down
    assert cluster.leader(names.queue) != leader
    cluster.start(leader)
    settle(producer=producer, timeout=300)
    check_books(minimum=producer.expected)
    assert all(p.poll() is None for p in [*system.relays, *system.workers]), "a process died"


def test_each_node_restarted_in_turn(system, cluster_nodes, names, broker_url):
    """2. A rolling broker upgrade: each node stopped and started again in turn, the next only
    once the previous is back and clustered."""
    cluster = cluster_nodes
    producer = start_flow(system, cluster, names, broker_url, pace=0.002)
    progress_beyond(300)
    for node in (1, 2, 3):
        before = effects_so_far()
        cluster.ctl(node, "shutdown")
        progress_beyond(before + 150)  # the other two carry the flow
        cluster.start(node)
        time.sleep(1)
    settle(producer=producer, timeout=300)
    check_books(minimum=producer.expected)
    assert all(p.poll() is None for p in [*system.relays, *system.workers]), "a process died"


def test_a_minority_node_cut_off_while_traffic_flows_then_rejoining(
    system, cluster_nodes, names, broker_url
):
    """3. The leader's node leaves the cluster (``stop_app``: its VM stays, RabbitMQ stops and
    every connection to it closes) while messages flow, and rejoins later."""
    cluster = cluster_nodes
    producer = start_flow(system, cluster, names, broker_url, pace=0.001)
    progress_beyond(500)
    cut = cluster.leader(names.queue)
    cluster.stop_app(cut)
    before = effects_so_far()
    progress_beyond(before + 300)
    cluster.start_app(cut)
    settle(producer=producer, timeout=300)
    check_books(minimum=producer.expected)
    assert all(p.poll() is None for p in [*system.relays, *system.workers]), "a process died"
