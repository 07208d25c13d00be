"""Exactly-once effects survive crashes and cut connections.

Each scenario runs the real system (PostgreSQL, RabbitMQ, relay processes, Celery worker
processes), breaks it while at least 2,000 messages flow, then checks the books from the
databases alone (tests/faults/harness.py: check_books).
"""

import json
import random
import signal
import subprocess
import threading
import time

import amqp
import kombu
import psycopg
import pytest
from django.db import connection

from inbox_outbox.cloudevents import CONTENT_TYPE
from outbox.models import OutboxMessage
from tests.conftest import wait_until
from tests.faults.harness import Producer, System, check_books, describe, settle
from tests.tcp_proxy import TcpProxy
from tests.testapp.models import Effect

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

N = 2000


@pytest.fixture
def system(processes):
    return System(processes)


def wait_consuming(broker_url, queue, count):
    def consumers():
        with kombu.Connection(broker_url) as conn:
            try:
                return conn.default_channel.queue_declare(queue, passive=True).consumer_count
            except conn.channel_errors:
                return 0

    wait_until(lambda: consumers() >= count, timeout=60, message=f"{count} consumer(s)")


def effects_so_far():
    return Effect.objects.filter(consumer="effect").count()


def test_relay_killed_repeatedly_while_draining(system, names, broker_url):
    """1. SIGKILL at random points of the relay's cycle: after publishing, before marking
    sent, mid-claim. Nothing is lost; re-sends are absorbed by the inbox."""
    system.worker()
    wait_consuming(broker_url, names.queue, 1)
    producer = Producer(N, keys=40)
    producer.start()
    for _ in range(6):
        relay = system.relay()
        time.sleep(random.uniform(1.5, 2.5))  # start-up takes about a second
        system.processes.kill(relay)
    system.relay()
    settle(producer=producer)
    check_books(minimum=producer.expected)


def test_workers_killed_repeatedly_inside_handlers(system, names, broker_url):
    """2. Workers SIGKILLed mid-handler (handlers take a few ms), one restarted while the
    other runs: redelivered messages are handled once."""
    system.relay()
    for _ in range(2):
        system.worker()
    wait_consuming(broker_url, names.queue, 2)
    producer = Producer(N, keys=40, extra={"sleep": 0.003})
    producer.start()
    for round_ in range(6):
        wait_until(
            lambda r=round_: effects_so_far() > (r + 1) * 150,
            timeout=60,
            message=lambda: f"progress: {describe()}",
        )
        victim = system.live(system.workers)[0]
        system.processes.kill(victim)
        system.worker()
    settle(producer=producer)
    check_books(minimum=producer.expected)


def test_broker_connections_cut_and_restored(system, names, broker_url):
    """3. A TCP proxy between every process and RabbitMQ drops all connections, several
    times, while messages flow."""
    with TcpProxy(("127.0.0.1", 5672)) as proxy:
        via_proxy = {"CELERY_BROKER_URL": proxy.via(broker_url)}
        system.env.update(via_proxy)
        system.relay()
        system.worker()
        system.worker()
        wait_consuming(broker_url, names.queue, 2)
        producer = Producer(N, keys=40, pace=0.001)
        producer.start()
        for _ in range(4):
            time.sleep(1.0)
            proxy.cut()
            time.sleep(1.5)
            proxy.restore()
        settle(producer=producer, timeout=240)
    check_books(minimum=producer.expected)


def rabbitmqctl(*args):
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)


def test_rabbitmq_app_stopped_and_started(system, names, broker_url):
    """4. RabbitMQ's app stopped and started mid-run: durable queues and persistent messages
    survive; relays and workers reconnect."""
    if rabbitmqctl("status").returncode != 0:
        pytest.skip("rabbitmqctl cannot reach the local broker on this machine")
    system.relay()
    system.worker()
    wait_consuming(broker_url, names.queue, 1)
    producer = Producer(N, keys=40, pace=0.002)
    producer.start()
    wait_until(lambda: effects_so_far() > 300, timeout=60, message="traffic before the stop")
    try:
        assert rabbitmqctl("stop_app").returncode == 0
        time.sleep(2)
    finally:
        assert rabbitmqctl("start_app").returncode == 0
        rabbitmqctl("await_startup")
    settle(producer=producer, timeout=240)
    check_books(minimum=producer.expected)


def terminate_backends(appname):
    with psycopg.connect(
        f"dbname={connection.settings_dict['NAME']} host=127.0.0.1 user=postgres", autocommit=True
    ) as conn:
        return conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            [appname],
        ).fetchone()[0]


def test_database_connections_terminated_mid_transaction(system, names, broker_url):
    """5. pg_terminate_backend on the relays' and workers' connections, repeatedly."""
    system.relay()
    system.worker()
    system.worker()
    wait_consuming(broker_url, names.queue, 2)
    producer = Producer(N, keys=40, extra={"sleep": 0.002}, pace=0.001)
    producer.start()
    killed = 0
    for _ in range(8):
        time.sleep(0.6)
        killed += terminate_backends("faults-relay") + terminate_backends("faults-worker")
    assert killed >= 8, "no connection was terminated: the scenario proved nothing"
    settle(producer=producer, timeout=240)
    check_books(minimum=producer.expected)
    assert all(p.poll() is None for p in system.relays + system.workers), "a process died"


def test_four_relays_and_four_workers_with_a_hot_key(system, names, broker_url):
    """6. Four relays and four workers at once; one key takes 20% of the traffic."""
    for _ in range(4):
        system.relay()
        system.worker()
    wait_consuming(broker_url, names.queue, 4)
    producer = Producer(N, keys=40, hot_share=0.2)
    producer.start()
    settle(producer=producer, timeout=240)
    books = check_books(minimum=producer.expected)
    assert Effect.objects.filter(key="hot").count() > N // 10
    assert books["keys"] == 41  # 40 keys and the hot one


def test_poison_at_the_head_of_a_key_and_a_flaky_handler(system, names, broker_url):
    """7. The first message of a key can never succeed; another fails twice then succeeds.
    The rest flows; the poison ends dead and visible, the flaky one succeeds on attempt 3."""
    system.relay()
    system.worker()
    wait_consuming(broker_url, names.queue, 1)
    producer = Producer(
        N, keys=40, rollback_every=0, first_payloads={0: {"poison": True}, 1: {"fail_times": 2}}
    )
    producer.start()
    settle(producer=producer, expect_dead=1, timeout=180)
    poison = OutboxMessage.objects.get(payload__n=0)
    flaky = OutboxMessage.objects.get(payload__n=1)
    check_books(expect_dead={str(poison.id)}, minimum=N)
    from inbox.models import InboxMessage

    dead = InboxMessage.objects.get(message_id=str(poison.id), consumer__endswith=":effect")
    assert dead.status == "dead" and "can never succeed" in dead.last_error and dead.attempts == 3
    assert (
        InboxMessage.objects.get(message_id=str(flaky.id), consumer__endswith=":effect").attempts
        == 3
    )
    later = Effect.objects.filter(consumer="effect", key=poison.key).count()
    assert later > 0, "the poison blocked its key for good"


def test_duplicate_storm(system, names, broker_url):
    """8. An extra raw publisher delivers every message three more times, same ids."""
    system.relay()
    system.worker()
    system.worker()
    wait_consuming(broker_url, names.queue, 2)
    producer = Producer(N, keys=40)
    producer.start()
    stop = threading.Event()

    def storm():
        conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
        conn.connect()
        channel = conn.channel()
        seen: set = set()
        while not stop.is_set():
            fresh = [
                m
                for m in OutboxMessage.objects.sent().values(
                    "id", "topic", "key", "sequence", "epoch", "payload"
                )
                if m["id"] not in seen
            ]
            for m in fresh:
                seen.add(m["id"])
                # A duplicate is the same message: same id, source and position.
                body = {
                    "specversion": "1.0",
                    "id": str(m["id"]),
                    "source": names.service,
                    "type": m["topic"],
                    "datacontenttype": "application/json",
                    "partitionkey": m["key"],
                    "sequence": str(m["sequence"]),
                    "sequenceepoch": str(m["epoch"]),
                    "data": m["payload"],
                }
                for _ in range(3):
                    channel.basic_publish(
                        amqp.Message(
                            json.dumps(body),
                            content_type=CONTENT_TYPE,
                            message_id=str(m["id"]),
                            type=m["topic"],
                        ),
                        exchange=names.exchange,
                        routing_key=m["topic"],
                    )
            time.sleep(0.2)
        conn.close()
        from django.db import connections

        connections.close_all()
        storm.copies = 3 * len(seen)  # type: ignore[attr-defined]

    storming = threading.Thread(target=storm)
    storming.start()
    settle(producer=producer)
    time.sleep(2)
    stop.set()
    storming.join(timeout=30)
    settle()
    assert storm.copies >= 3 * producer.expected  # type: ignore[attr-defined]
    check_books(minimum=producer.expected)


def test_commits_out_of_id_order_with_some_rolled_back(system, names, broker_url):
    """9. Every 25th transaction takes its id early and commits half a second later, and
    every 7th rolls back: nothing skipped, nothing handled twice."""
    system.relay()
    system.worker()
    wait_consuming(broker_url, names.queue, 1)
    producer = Producer(N, keys=40, slow_every=25, slow_seconds=0.5)
    producer.start()
    settle(producer=producer)
    books = check_books(minimum=producer.expected)
    late = OutboxMessage.objects.filter(payload__n__in=list(range(0, N, 25))).count()
    assert late == len([n for n in range(0, N, 25) if n % 7]), "a slow transaction was lost"
    assert books["committed"] == producer.expected


def test_rolling_restart_under_continuous_traffic(system, names, broker_url):
    """10. Every relay and worker is restarted one by one (SIGTERM, then a new one) while
    traffic flows; the backlog drains to zero."""
    for _ in range(2):
        system.relay()
        system.worker()
    wait_consuming(broker_url, names.queue, 2)
    producer = Producer(N, keys=40, pace=0.002)
    producer.start()
    for old in list(system.relays) + list(system.workers):
        time.sleep(0.5)
        system.processes.kill(old, signal.SIGTERM)
        assert old.returncode == 0, "a process did not stop cleanly on SIGTERM"
        (system.relay if old in system.relays else system.worker)()
    settle(producer=producer, timeout=240)
    check_books(minimum=producer.expected)
