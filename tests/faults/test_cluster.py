"""Broker nodes lost under load, on the three-node cluster (bin/rabbitmq-cluster).

With quorum queues, two relays and two workers connected to different nodes (each lists all
three, starting from its own) and at least 3,000 keyed messages flowing, a node is killed,
restarted or cut off; then the books are checked from the databases alone, as in the rest of
the suite (tests/faults/harness.py: nothing lost, one effect per message and consumer, per-key
order, nothing stuck).
"""

import threading
import time
from urllib.parse import urlsplit

import pytest

from inbox import topology
from inbox_outbox.broker import connect
from outbox.models import OutboxMessage
from tests.conftest import test_database_url, wait_until
from tests.faults.harness import Producer, System, check_books, describe, settle
from tests.faults.test_scenarios import effects_so_far, wait_consuming
from tests.tcp_proxy import TcpProxy

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
    # The flow goes on until the third node is back (a fixed count ran out before the last
    # restart on a fast run, and the wait for progress then had nothing left to see).
    upgraded = threading.Event()
    producer = start_flow(system, cluster, names, broker_url, pace=0.01, until=upgraded)
    try:
        progress_beyond(300)
        for node in (1, 2, 3):
            assert not producer.done.is_set(), f"the flow ended before qc{node}'s restart"
            before = effects_so_far()
            cluster.shutdown(node)
            progress_beyond(before + 150)  # the other two carry the flow
            cluster.start(node)
            time.sleep(1)
    finally:
        upgraded.set()  # also when a step failed: no producer left writing past the test
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


def dead_lettered(cluster, names):
    return int(cluster.queue(f"{names.queue}.dead-letter").get("messages") or 0)


def test_the_database_away_longer_than_the_delivery_limit_dead_letters_nothing(
    system, cluster_nodes, names, broker_url
):
    """4. The workers' database is cut off for 15 s with DELIVERY_LIMIT 2 (returning their
    deliveries every second would pass the limit several times over): the workers hold them
    unacknowledged, nothing is dead-lettered or lost, and all is handled once afterwards."""
    cluster = cluster_nodes
    database = test_database_url()
    system.env["DELIVERY_LIMIT"] = "2"
    with TcpProxy(("127.0.0.1", urlsplit(database).port or 5432)) as proxy:
        for order in WORKER_NODES:
            system.worker(CELERY_BROKER_URL=cluster.url(*order), DATABASE_URL=proxy.via(database))
        wait_consuming(broker_url, names.queue, len(WORKER_NODES))
        for order in RELAY_NODES:
            system.relay(CELERY_BROKER_URL=cluster.url(*order))
        producer = Producer(N, keys=40, pace=0.001)
        producer.start()
        progress_beyond(300)
        proxy.cut()
        time.sleep(15)
        assert dead_lettered(cluster, names) == 0
        proxy.restore()
        settle(producer=producer, timeout=300)
    check_books(minimum=producer.expected)
    assert dead_lettered(cluster, names) == 0
    logs = b"".join(p.log_path.read_bytes() for p in system.workers)
    assert b"holding" in logs and b"returning" not in logs  # held, never given back


def test_a_full_queue_refuses_publishes_and_the_relays_back_off_uncharged(
    system, cluster_nodes, names, broker_url, settings
):
    """5. The service queue is capped (``max-length`` by policy, with the declared
    ``reject-publish``) while no worker consumes: the broker nacks, the relays back off without
    charging an attempt; when the workers start, everything drains, each sent once."""
    cluster = cluster_nodes
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "QUEUE_TYPE": "quorum"}
    with connect(cluster.url()) as conn:
        topology.declare(conn)  # as a worker would, so that the relays' messages are routed
    policy = f"full-{names.queue}"
    cluster.ctl(
        1, "set_policy", "--apply-to", "queues", policy, f"^{names.queue}$", '{"max-length": 300}'
    )
    try:
        for order in RELAY_NODES:
            system.relay(CELERY_BROKER_URL=cluster.url(*order))
        producer = Producer(N, keys=40)
        producer.start()
        wait_until(
            lambda: (
                b"the broker refused" in b"".join(p.log_path.read_bytes() for p in system.relays)
            ),
            timeout=120,
            message=lambda: f"a refusal: {describe()}",
        )
        time.sleep(5)  # the relays keep trying and backing off
        assert int(cluster.queue(names.queue)["messages"]) <= 300 + 2 * 100  # one batch each
        unsent = OutboxMessage.objects.filter(topic="test.effect").unsent()
        assert unsent.count() > 1000
        assert not unsent.filter(attempts__gt=0).exists()  # refused, never charged
        for order in WORKER_NODES:
            system.worker(CELERY_BROKER_URL=cluster.url(*order))
        settle(producer=producer, timeout=300)
    finally:
        cluster.ctl(1, "clear_policy", policy)
    check_books(minimum=producer.expected)
    charged = OutboxMessage.objects.filter(topic="test.effect").exclude(attempts=1, last_error="")
    assert not charged.exists(), "a refusal was charged as an attempt"
