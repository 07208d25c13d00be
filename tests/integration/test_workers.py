"""Exactly-once effects with real Celery worker processes consuming RabbitMQ."""

import json
import os
import signal
import subprocess
import time
import uuid

import kombu
import pytest
from django.db import transaction

from inbox.models import InboxMessage
from inbox_outbox.cloudevents import CONTENT_TYPE
from outbox import publish
from outbox.models import OutboxMessage
from tests.conftest import Sender, wait_until
from tests.testapp.models import Account, Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def consumers(broker_url, queue):
    with kombu.Connection(broker_url) as conn:
        try:
            return conn.default_channel.queue_declare(queue, passive=True).consumer_count
        except conn.channel_errors:
            return 0


def start_workers(processes, broker_url, names, count=1, **env):
    workers = [processes.worker(f"worker{i}", **env) for i in range(count)]
    wait_until(
        lambda: consumers(broker_url, names.queue) >= count,
        timeout=60,
        message=f"{count} worker(s) consuming {names.queue}",
    )
    return workers


@pytest.fixture
def sender(names):
    s = Sender(names)
    yield s
    s.close()


def effects(consumer="effect"):
    return list(Effect.objects.filter(consumer=consumer).values_list("message_id", flat=True))


def test_one_message_delivered_three_times_among_others_has_one_effect(
    processes, broker_url, names, sender
):
    start_workers(processes, broker_url, names)
    twice = str(uuid.uuid4())
    others = []
    for i in range(3):
        sender.event("test.effect", {"copy": i}, id=twice)
        others.append(sender.event("test.effect", {"other": i}))
    wait_until(lambda: len(effects()) >= 4, timeout=30, message="four effects")
    time.sleep(1)  # give a wrongly repeated effect time to show up
    assert sorted(effects()) == sorted([twice, *others])
    assert sorted(effects("audit")) == sorted([twice, *others])


def test_two_workers_handed_the_same_message_at_once_commit_it_once(
    processes, broker_url, names, sender
):
    # One message in flight per worker, no batching: each worker holds one copy while the
    # handler sleeps, so the two transactions overlap and meet at the inbox's unique index.
    start_workers(
        processes,
        broker_url,
        names,
        count=2,
        INBOX_OUTBOX_PREFETCH_COUNT="1",
        INBOX_OUTBOX_INBOX_BATCH_SIZE="1",
    )
    message_id = str(uuid.uuid4())
    for _ in range(2):
        sender.event("test.effect", {"sleep": 3.0}, id=message_id)
    # Both copies held at once, one per worker: the race really happens.
    wait_until(lambda: unacknowledged(names.queue) == 2, timeout=10, message="two copies in flight")
    wait_until(
        lambda: InboxMessage.objects.filter(message_id=message_id).count() == 2,
        timeout=30,
        message="both consumers' inbox rows",
    )
    wait_until(lambda: consumers_idle(broker_url, names.queue), timeout=30, message="queue drained")
    assert effects() == [message_id]
    assert effects("audit") == [message_id]


def unacknowledged(queue):
    vhost = kombu.Connection(os.environ["CELERY_BROKER_URL"]).virtual_host or "/"
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    counts = dict(line.split("\t") for line in listing.splitlines() if "\t" in line)
    return int(counts.get(queue, 0))


def consumers_idle(broker_url, queue):
    with kombu.Connection(broker_url) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count == 0


def test_a_worker_killed_inside_a_handler_leads_to_one_effect_after_redelivery(
    processes, broker_url, names, sender, tmp_path
):
    marker = tmp_path / "crash-once"
    marker.touch()
    first, second = start_workers(
        processes,
        broker_url,
        names,
        count=2,
        INBOX_OUTBOX_PREFETCH_COUNT="1",
        INBOX_OUTBOX_INBOX_BATCH_SIZE="1",
    )
    message_id = sender.event("test.effect", {"crash_marker": str(marker)})
    wait_until(
        lambda: first.poll() is not None or second.poll() is not None,
        timeout=30,
        message="a worker to die inside the handler",
    )
    assert 9 in (first.poll(), second.poll())
    wait_until(
        lambda: effects() == [message_id], timeout=60, message="the redelivered message's effect"
    )
    time.sleep(1)
    assert effects() == [message_id]
    assert not marker.exists()


def test_a_redelivered_message_whose_handler_publishes_produces_one_outgoing_message(
    processes, broker_url, names, sender
):
    start_workers(processes, broker_url, names)
    message_id = str(uuid.uuid4())
    for _ in range(3):
        sender.event("test.transfer", {"account": "alice", "amount": 5}, id=message_id)
    wait_until(lambda: consumers_idle(broker_url, names.queue), timeout=30, message="queue drained")
    wait_until(
        lambda: Account.objects.filter(name="alice").exists(), timeout=30, message="transfer"
    )
    time.sleep(1)
    assert Account.objects.get(name="alice").balance == 5
    assert OutboxMessage.objects.filter(topic="test.transferred").count() == 1


def test_poison_is_stored_with_its_reason_and_the_worker_keeps_consuming(
    processes, broker_url, names, sender
):
    start_workers(processes, broker_url, names, INBOX_OUTBOX_MAX_BODY_BYTES="2000")
    sender.raw(b"\x00not json", to_queue=True, message_id="p-binary")
    sender.raw(
        json.dumps({"specversion": "1.0", "type": "test.effect", "data": {}}).encode(),
        to_queue=True,
        message_id="p-no-id",
        content_type=CONTENT_TYPE,
    )
    sender.raw(b'{"plain": true}', to_queue=True, message_id="p-no-topic")
    sender.raw(b'{"plain": true}', to_queue=True, message_id="p-unknown", type="nobody.handles")
    sender.raw(
        json.dumps({"big": "x" * 5000}).encode(),
        to_queue=True,
        message_id="p-big",
        type="test.effect",
    )
    good = sender.event("test.effect", {"after": "poison"})
    wait_until(lambda: effects() == [good], timeout=30, message="the good message after the poison")
    rejected = {row.message_id: row for row in InboxMessage.objects.rejected()}
    assert set(rejected) == {"p-binary", "p-no-id", "p-no-topic", "p-unknown", "p-big"}
    reasons = {mid: row.last_error for mid, row in rejected.items()}
    assert "not JSON" in reasons["p-binary"]
    assert "without an id" in reasons["p-no-id"]
    assert "message_id and type" in reasons["p-no-topic"]
    assert "no handler for topic 'nobody.handles'" in reasons["p-unknown"]
    assert "over MAX_BODY_BYTES" in reasons["p-big"]
    assert bytes(rejected["p-binary"].raw_body) == b"\x00not json"
    assert consumers_idle(broker_url, names.queue)  # all acknowledged, none requeued forever


def test_progress_survives_a_worker_restart_mid_stream(processes, broker_url, names, sender):
    [worker] = start_workers(processes, broker_url, names)
    ids = [sender.event("test.effect", {"n": i, "sleep": 0.002}) for i in range(2000)]
    wait_until(lambda: len(effects()) >= 300, timeout=60, message="some progress")
    processes.kill(worker, signal.SIGTERM)
    done_before = len(effects())
    assert done_before < 2000, "the worker finished before it could be restarted"
    start_workers(processes, broker_url, names)
    wait_until(lambda: len(effects()) >= 2000, timeout=120, message="all 2,000 effects")
    time.sleep(1)
    assert sorted(effects()) == sorted(ids)


def test_10000_messages_through_outbox_relay_and_two_workers_have_10000_effects(
    processes, broker_url, names
):
    start_workers(processes, broker_url, names, count=2)
    processes.relay()
    ids = set()
    for first in range(0, 10_000, 500):
        with transaction.atomic():
            for n in range(first, first + 500):
                ids.add(str(publish("test.effect", {"n": n}, key=f"k{n % 50}").id))
    started = time.monotonic()
    wait_until(
        lambda: Effect.objects.filter(consumer="effect").count() >= 10_000,
        timeout=300,
        message="10,000 effects",
    )
    elapsed = time.monotonic() - started
    time.sleep(1)
    assert set(effects()) == ids and len(effects()) == 10_000
    assert not OutboxMessage.objects.unsent().exists()
    assert not InboxMessage.objects.exclude(status="done").exists()
    print(f"\n10,000 messages end to end in {elapsed:.1f}s after the last commit")


def test_a_plain_celery_task_made_exactly_once_runs_once_per_task_id(processes, broker_url, names):
    from tests.testapp.tasks import credit, credit_once_per_reference

    credit.apply(args=("bob", 10), task_id="t-1")
    credit.apply(args=("bob", 10), task_id="t-1")
    credit.apply(args=("bob", 1), task_id="t-2")
    assert Account.objects.get(name="bob").balance == 11
    credit_once_per_reference.apply(args=("carol", 7, "ref-1"))
    credit_once_per_reference.apply(args=("carol", 7, "ref-1"))
    assert Account.objects.get(name="carol").balance == 7

    # The same task id twice through a real worker.
    start_workers(processes, broker_url, names)
    queue = f"celery-{names.service}"
    for _ in range(2):
        credit.apply_async(args=("dave", 3), task_id="t-dave", queue=queue)
    wait_until(lambda: Account.objects.filter(name="dave").exists(), timeout=30, message="task ran")
    time.sleep(2)
    assert Account.objects.get(name="dave").balance == 3
