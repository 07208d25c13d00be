"""Committed messages wake the long-running relay; folded nudges lose no wake-up."""

import time

import pytest
from django.db import transaction

from outbox import publish, publishing
from tests.conftest import read_queue, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def burst_queue(bind_queue):
    return bind_queue("burst.#")


def arrived(broker_url, queue, ids, got):
    got.update(m.properties["message_id"] for m in read_queue(broker_url, queue, idle=0.2))
    return got >= ids


def start_idle_relay(processes, **env):
    relay = processes.relay(RELAY_POLL_INTERVAL="30", **env)
    wait_until(lambda: b"running" in relay.log_path.read_bytes(), timeout=30, message="relay start")
    time.sleep(0.5)  # let it reach its first idle wait
    return relay


def test_a_commit_wakes_the_relay_though_it_polls_every_30s(
    names, processes, broker_url, burst_queue
):
    start_idle_relay(processes)
    started = time.monotonic()
    with transaction.atomic():
        message = publish("burst.event", {"n": 1})
    got: set[str] = set()
    wait_until(
        lambda: arrived(broker_url, burst_queue, {str(message.id)}, got),
        timeout=10,
        message="the message on the queue",
    )
    assert time.monotonic() - started < 10


def test_a_message_whose_nudge_was_folded_is_still_relayed_promptly(
    names, processes, broker_url, burst_queue, settings, monkeypatch
):
    # A wide fold interval makes the race deterministic: the second commit comes after the
    # relay handled the first and went idle, yet within the interval, so it sends no NOTIFY.
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "NUDGE_INTERVAL": 2.0}
    monkeypatch.setattr(publishing, "_last_nudge", 0.0)  # forget other tests' nudges
    start_idle_relay(processes, NUDGE_INTERVAL="2.0")
    with transaction.atomic():
        first = publish("burst.event", {"n": 1})
    got: set[str] = set()
    wait_until(
        lambda: arrived(broker_url, burst_queue, {str(first.id)}, got),
        timeout=10,
        message="the first message",
    )
    with transaction.atomic():
        second = publish("burst.event", {"n": 2})  # folded: no NOTIFY of its own
    started = time.monotonic()
    wait_until(
        lambda: arrived(broker_url, burst_queue, {str(second.id)}, got),
        timeout=15,
        message="the folded message (the relay polls only every 30 s)",
    )
    assert time.monotonic() - started < 15
