"""A killed relay holds its keys for about one lease, not a minute: commit-to-handler latency
while the relay is SIGKILLed three times under steady traffic, with the default lease."""

import statistics
import time

import pytest

from outbox.models import OutboxMessage
from tests.faults.harness import Producer, System, check_books, settle
from tests.faults.test_scenarios import wait_consuming
from tests.testapp.models import Effect

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

#: The library's defaults, not the suite's fast ones: this measures what users get.
DEFAULT_LEASE = {
    "INBOX_OUTBOX_RELAY_LEASE_SECONDS": "5.0",
    "INBOX_OUTBOX_RELAY_CONFIRM_TIMEOUT": "30.0",
}


def latencies() -> list[float]:
    created = {
        str(i): at
        for i, at in OutboxMessage.objects.filter(topic="test.effect").values_list(
            "id", "created_at"
        )
    }
    return sorted(
        (handled - created[mid]).total_seconds()
        for mid, handled in Effect.objects.filter(consumer="effect").values_list(
            "message_id", "created_at"
        )
    )


def test_a_relay_killed_three_times_under_traffic_delays_messages_by_about_one_lease(
    processes, names, broker_url
):
    system = System(processes, env=DEFAULT_LEASE)
    system.worker()
    wait_consuming(broker_url, names.queue, 1)
    relay = system.relay()
    time.sleep(2)  # start-up
    producer = Producer(3000, keys=40, pace=0.01)  # about 100 transactions a second
    producer.start()
    for _ in range(3):
        time.sleep(7)
        system.processes.kill(relay)
        relay = system.relay()
    settle(producer=producer)
    check_books(minimum=producer.expected)
    seen = latencies()
    p50 = statistics.median(seen)
    p99 = seen[int(len(seen) * 0.99) - 1]
    print(
        f"\nrelay killed 3x, lease 5 s: {len(seen)} messages, p50 {p50:.3f} s, "
        f"p99 {p99:.2f} s, max {seen[-1]:.2f} s"
    )
    # With the old 60-second lease p99 was 40-55 s; a lease of 5 s bounds the wait by it.
    assert p99 < 5.0 * 2, f"p99 {p99:.2f} s"
