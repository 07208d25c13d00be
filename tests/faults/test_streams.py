"""Per-stream order under faults (issue 12): counters purged and restarted in new epochs while
traffic flows and relays are killed."""

import random
import threading
import time

import pytest
from django.db import connections

from outbox.models import OutboxMessage
from outbox.operations import purge_idle_sequences
from tests.faults.harness import Producer, System, check_books, settle
from tests.faults.test_scenarios import N, wait_consuming

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def test_counters_purged_and_restarted_mid_run_while_relays_are_killed(
    processes, names, broker_url
):
    """The retention job's counter purge runs every 0.3 s under traffic (every key with
    nothing unsent restarts at 1 in a new epoch) while the relay is SIGKILLed: consumers
    follow each restart; every committed message has one effect, in (epoch, sequence) order."""
    system = System(processes)
    system.worker()
    wait_consuming(broker_url, names.queue, 1)
    producer = Producer(N, keys=20, pace=0.002)
    stop = threading.Event()
    purged = []

    def purge() -> None:
        try:
            while not stop.is_set():
                purged.append(purge_idle_sequences(idle_seconds=0))
                time.sleep(0.3)
        finally:
            connections.close_all()

    purger = threading.Thread(target=purge, daemon=True)
    producer.start()
    purger.start()
    for _ in range(3):
        relay = system.relay()
        time.sleep(random.uniform(2.0, 3.0))
        system.processes.kill(relay)
    system.relay()
    assert producer.done.wait(240), "the producer did not finish"
    stop.set()
    purger.join(timeout=30)
    settle(producer=producer, timeout=240)
    books = check_books(minimum=producer.expected)
    epochs = OutboxMessage.objects.filter(topic="test.effect").values("key", "epoch").distinct()
    assert sum(purged) > 0 and epochs.count() > books["keys"], "no counter was ever restarted"
