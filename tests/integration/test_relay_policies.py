"""What the relay does with messages the broker won't take, that expire, or that keep failing."""

import datetime as dt
import json
import signal
import subprocess
import sys
import time

import pytest
from django.db import transaction
from django.utils import timezone

from outbox import publish
from outbox.models import OutboxMessage
from outbox.publisher import BatchResult, Publisher
from outbox.relay import Relay
from tests.conftest import ROOT, read_queue, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def queue(bind_queue):
    return bind_queue("bound.#")


def relay_once():
    relay = Relay()
    try:
        relay.drain()
    finally:
        relay.close()
    return relay


def test_an_unroutable_message_is_not_marked_sent_but_retried_with_backoff(names, queue):
    message = publish("nobody.listens", {})
    relay_once()
    row = OutboxMessage.objects.get(id=message.id)
    assert row.status == "failed" and row.attempts == 1
    assert "unroutable" in row.last_error and row.available_at > timezone.now()


def test_unroutable_messages_end_dead_after_the_maximum_attempts(names, queue, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "RELAY_MAX_ATTEMPTS": 3}
    message = publish("nobody.listens", {})
    for _ in range(3):
        OutboxMessage.objects.filter(id=message.id).update(available_at=timezone.now())
        relay_once()
    row = OutboxMessage.objects.get(id=message.id)
    assert (row.status, row.attempts) == ("dead", 3)


def test_the_dead_and_ignore_policies_for_unroutable_messages(names, queue, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "UNROUTABLE": "dead"}
    dead = publish("nobody.listens", {})
    relay_once()
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "UNROUTABLE": "ignore"}
    ignored = publish("nobody.listens", {})
    relay_once()
    assert OutboxMessage.objects.get(id=dead.id).status == "dead"
    assert OutboxMessage.objects.get(id=ignored.id).status == "sent"


def test_a_message_past_its_ttl_is_marked_expired_and_never_published(names, queue, broker_url):
    stale = publish("bound.event", {"n": 1}, ttl=60)
    OutboxMessage.objects.filter(id=stale.id).update(
        expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    fresh = publish("bound.event", {"n": 2}, ttl=60)
    relay_once()
    assert OutboxMessage.objects.get(id=stale.id).status == "expired"
    [delivered] = read_queue(broker_url, queue)
    assert delivered.properties["message_id"] == str(fresh.id)
    assert 0 < int(delivered.properties["expiration"]) <= 60_000


def test_a_resent_message_keeps_its_id_and_body(names, queue, broker_url):
    message = publish("bound.event", {"n": 1}, key="k")
    relay_once()
    OutboxMessage.objects.filter(id=message.id).update(status="pending")
    relay_once()
    first, second = read_queue(broker_url, queue)
    assert first.properties["message_id"] == second.properties["message_id"] == str(message.id)
    assert json.loads(first.body) == json.loads(second.body)


def test_a_nacked_message_holds_back_the_rest_of_its_key_but_not_other_keys(names):
    sent_order = []

    class NacksFirst(Publisher):
        def send(self, batch):
            self.result = BatchResult()
            for m in batch:
                sent_order.append((m.key, m.sequence))
                if (m.key, m.sequence) == ("a", 1) and len(sent_order) <= 3:
                    self.result.failed[m.id] = "nacked by the broker"
                else:
                    self.result.sent.add(m.id)

        def collect(self):
            return self.result

    with transaction.atomic():
        a1, a2 = publish("t", {}, key="a"), publish("t", {}, key="a")
        b1 = publish("t", {}, key="b")
    relay = Relay(publisher=NacksFirst())
    relay.drain()
    status = dict(OutboxMessage.objects.values_list("id", "status"))
    assert status[a1.id] == "failed" and status[a2.id] == "pending" and status[b1.id] == "sent"
    OutboxMessage.objects.filter(id=a1.id).update(available_at=timezone.now())
    relay.drain()
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {"sent"}
    assert [s for k, s in sent_order if k == "a"][-2:] == [1, 2]  # a2 went out again, after a1


def test_a_claim_looks_past_a_batch_of_messages_held_behind_a_key_in_flight(names):
    class Records(Publisher):
        def send(self, batch):
            self.result = BatchResult(sent={m.id for m in batch})
            self.batches.append([m.id for m in batch])
            self.payloads += [m.payload_json for m in batch]

        def collect(self):
            return self.result

    with transaction.atomic():
        held = [publish("t", {}, key="a") for _ in range(6)]
        free = [publish("t", {"n": n}) for n in range(5)]
    # Another relay holds the key's head: the next five, the oldest candidates, must wait.
    OutboxMessage.objects.filter(id=held[0].id).update(
        lease_owner="elsewhere", lease_until=timezone.now() + dt.timedelta(minutes=1)
    )
    publisher = Records()
    publisher.batches, publisher.payloads = [], []
    relay = Relay(publisher=publisher, batch_size=5)
    relay.run_once()
    relay.close()
    assert publisher.batches == [[m.id for m in free]]
    # Read after the look-past, not with the first batch: still each message's own payload.
    assert [json.loads(p) for p in publisher.payloads] == [{"n": n} for n in range(5)]
    assert set(OutboxMessage.objects.filter(key="a").values_list("status", flat=True)) == {
        "pending"
    }


def test_outbox_relay_drains_on_sigterm_and_exits_zero(names, queue, processes, broker_url):
    relay = processes.relay()
    wait_until(lambda: b"running" in relay.log_path.read_bytes(), timeout=30, message="relay start")
    with transaction.atomic():
        message = publish("bound.event", {})
    wait_until(
        lambda: OutboxMessage.objects.get(id=message.id).status == "sent",
        timeout=30,
        message="sent",
    )
    started = time.monotonic()
    processes.kill(relay, signal.SIGTERM)
    assert relay.returncode == 0 and time.monotonic() - started < 10
    assert b"outbox relay stopped" in relay.log_path.read_bytes()


def test_outbox_relay_once_drains_the_backlog_and_exits(names, queue, processes, broker_url):
    with transaction.atomic():
        for n in range(25):
            publish("bound.event", {"n": n})
    done = subprocess.run(
        [sys.executable, "manage.py", "outbox_relay", "--once"],
        cwd=ROOT,
        env=processes.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "settled 25" in done.stdout
    assert len(read_queue(broker_url, queue)) == 25


def test_a_keyed_message_the_relay_gives_up_on_is_announced_void_and_the_announcement_sent(
    names, queue, broker_url, settings
):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "UNROUTABLE": "dead"}
    stale = publish("bound.event", {"n": 1}, key="k", ttl=60)
    OutboxMessage.objects.filter(id=stale.id).update(
        expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    dead = publish("nobody.listens", {"n": 2}, key="k")
    relay_once()
    assert OutboxMessage.objects.get(id=stale.id).status == "expired"
    assert OutboxMessage.objects.get(id=dead.id).status == "dead"
    announcements = {m.voids: m for m in OutboxMessage.objects.filter(voids__isnull=False)}
    assert set(announcements) == {stale.id, dead.id}
    void = announcements[stale.id]
    assert (void.topic, void.key, void.sequence, void.status) == ("bound.event", "k", 1, "sent")
    [delivered] = read_queue(broker_url, queue)  # the announcement of "nobody.listens" is dead
    assert json.loads(delivered.body)["id"] == str(void.id)
