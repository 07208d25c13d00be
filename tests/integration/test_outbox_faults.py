"""The relay under faults: broker outages, a crash between confirm and mark-sent, several
relays at once. Real relay processes, real RabbitMQ, real PostgreSQL."""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

import kombu
import pytest
from django.db import transaction

from outbox import publish
from outbox.models import OutboxMessage
from tests.conftest import ROOT, read_queue, wait_until
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def queue(bind_queue):
    return bind_queue("load.#")


def publish_many(count, *, keys=0, per_transaction=200, start=0):
    ids = []
    for first in range(start, start + count, per_transaction):
        with transaction.atomic():
            for n in range(first, min(first + per_transaction, start + count)):
                key = f"k{n % keys}" if keys else None
                ids.append(str(publish("load.event", {"n": n}, key=key).id))
    return ids


def all_sent():
    return not OutboxMessage.objects.unsent().exists()


def test_a_broker_outage_loses_nothing_and_charges_no_attempt(names, processes, queue, broker_url):
    host, port = "127.0.0.1", kombu.Connection(broker_url).port or 5672
    with TcpProxy((host, port)) as proxy:
        relay = processes.relay(
            CELERY_BROKER_URL=proxy.via(broker_url),
            INBOX_OUTBOX_RELAY_BATCH_SIZE="50",
        )
        ids: list[str] = []
        done = threading.Event()

        def produce():
            for round_ in range(10):
                ids.extend(publish_many(200, start=round_ * 200, per_transaction=50))
                time.sleep(0.2)
            done.set()

        from django.db import connections

        producer = threading.Thread(target=lambda: (produce(), connections.close_all()))
        producer.start()
        for _ in range(4):  # cut the relay off from the broker while messages flow
            time.sleep(0.6)
            proxy.cut()
            time.sleep(0.8)
            proxy.restore()
        producer.join(timeout=120)
        assert done.is_set()
        wait_until(all_sent, timeout=90, message="every message sent after the outages")
        assert b"broker unavailable" in relay.log_path.read_bytes(), "no cut hit the relay"

    delivered = Counter(m.properties["message_id"] for m in read_queue(broker_url, queue))
    assert set(delivered) == set(ids), "a committed message never reached the broker"
    assert len(ids) == 2000
    rows = OutboxMessage.objects.filter(id__in=ids)
    assert set(rows.values_list("status", flat=True)) == {"sent"}
    # An outage is not the message's fault: every row was charged exactly its one success.
    assert set(rows.values_list("attempts", flat=True)) == {1}


def test_a_relay_killed_after_the_confirm_and_before_marking_sent_leads_to_a_resend_with_the_same_id(
    names, processes, queue, broker_url
):
    [message_id] = publish_many(1)
    env = processes.env(
        INBOX_OUTBOX_RELAY_LEASE_SECONDS="2", INBOX_OUTBOX_RELAY_CONFIRM_TIMEOUT="1"
    )
    crashed = subprocess.run(
        [sys.executable, "tests/crashing_relay.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == 9, crashed.stdout + crashed.stderr
    assert "dying before marking sent" in crashed.stdout
    assert OutboxMessage.objects.get(id=message_id).status == "pending"  # confirmed, yet not marked

    time.sleep(2.5)  # the dead relay's lease expires
    again = subprocess.run(
        [sys.executable, "manage.py", "outbox_relay", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stdout + again.stderr

    deliveries = read_queue(broker_url, queue)
    assert [m.properties["message_id"] for m in deliveries] == [message_id, message_id]
    assert json.loads(deliveries[0].body) == json.loads(deliveries[1].body)  # same id, same body
    assert OutboxMessage.objects.get(id=message_id).status == "sent"


def test_three_relays_send_10000_keyed_messages_once_each_in_key_order(
    names, processes, queue, broker_url
):
    # Batches of 25 over 100 keys leave other keys' heads for the other relays: with one
    # batch per round of all keys, one relay would hold every key in flight in turn.
    relays = [processes.relay(f"relay{i}", INBOX_OUTBOX_RELAY_BATCH_SIZE="25") for i in range(3)]
    for relay in relays:
        wait_until(
            lambda r=relay: b"running" in r.log_path.read_bytes(), timeout=30, message="start"
        )
    time.sleep(0.5)  # all three idle and listening
    ids = publish_many(10_000, keys=100, per_transaction=10_000)  # one commit wakes all three
    wait_until(all_sent, timeout=120, message="all 10,000 messages sent by three relays")
    sent_by = []
    for relay in relays:
        processes.kill(relay, signal.SIGTERM)
        assert relay.returncode == 0
        stats = re.search(rb"outbox relay stopped: .*'sent': (\d+)", relay.log_path.read_bytes())
        sent_by.append(int(stats.group(1)) if stats else 0)
    # A key is in flight on one relay at a time, so how the work splits depends on timing;
    # at least two relays sending proves that they ran concurrently.
    assert sum(sent_by) == 10_000 and sorted(sent_by)[1] > 0, f"work was not shared: {sent_by}"

    deliveries = read_queue(broker_url, queue)
    counts = Counter(m.properties["message_id"] for m in deliveries)
    assert set(counts) == set(ids)
    # No crash happened, so a message delivered twice could only mean two live relays
    # claimed it at once.
    assert max(counts.values()) == 1
    owners = set(OutboxMessage.objects.values_list("lease_owner", flat=True))
    assert owners == {""}  # every lease was written back by its owner
    seen = defaultdict(list)
    for m in deliveries:
        body = json.loads(m.body)
        seen[body["partitionkey"]].append(int(body["sequence"]))
    assert len(seen) == 100
    for key, sequences in seen.items():
        assert sequences == list(range(1, 101)), f"key {key} out of order"
    relays_that_sent = {json.loads(m.body)["source"] for m in deliveries}
    assert relays_that_sent == {names.service}
