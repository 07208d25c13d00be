"""Application clocks skewed by ±2 minutes on relays and workers (issue 12 item 6): leases,
due times, expiry and retries are compared on the database's clock, so a skewed host neither
steals leases (duplicate sends) nor delays, expires or retries anything early or late."""

import pytest
from django.db.models import Max, Sum

from outbox.models import OutboxMessage
from tests.faults.harness import Producer, System, check_books, settle
from tests.faults.test_scenarios import N, wait_consuming

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def test_relays_and_workers_with_clocks_two_minutes_apart(processes, names, broker_url):
    system = System(processes)
    system.worker(CLOCK_SKEW_SECONDS="120")
    system.worker(CLOCK_SKEW_SECONDS="-120")
    wait_consuming(broker_url, names.queue, 2)
    system.relay(CLOCK_SKEW_SECONDS="120")
    system.relay(CLOCK_SKEW_SECONDS="-120")
    producer = Producer(
        N, keys=40, first_payloads={1: {"fail_times": 1}, 2: {"fail_times": 2}}, pace=0.001
    )
    producer.start()
    settle(producer=producer, timeout=240)
    check_books(minimum=producer.expected)
    sends = OutboxMessage.objects.filter(topic="test.effect").aggregate(
        total=Sum("attempts"), most=Max("attempts")
    )
    # A relay 2 minutes fast would take every lease in flight for expired and send it again.
    assert sends["total"] <= producer.expected * 1.02, f"re-sends: {sends}"
