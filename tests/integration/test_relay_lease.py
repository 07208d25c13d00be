"""Short leases, kept alive while the relay works: a live relay keeps its rows however slow the
broker is, a dead or stuck one loses them within about one lease."""

import time

import pytest

from outbox import publish
from outbox.models import OutboxMessage
from outbox.publisher import BatchResult, Publisher
from outbox.relay import Relay

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LEASE = 1.5


class HeldConfirms(Publisher):
    """Accepts a batch and confirms all of it when collected (as slowly as the test waits)."""

    def __init__(self) -> None:
        self.batch: list = []

    def send(self, batch):
        self.batch = list(batch)

    def collect(self):
        return BatchResult(sent={m.id for m in self.batch})


@pytest.fixture
def short_lease(settings, names):
    settings.INBOX_OUTBOX = {
        **settings.INBOX_OUTBOX,
        "RELAY_LEASE_SECONDS": LEASE,
        "RELAY_CONFIRM_TIMEOUT": 30.0,
    }


def claim(relay: Relay) -> set:
    batch = relay._claim().batch
    return {m.id for m in batch}


def test_a_batch_waiting_longer_than_its_lease_for_confirms_is_not_claimed_by_another_relay(
    short_lease,
):
    ids = {publish("test.lease", {"n": n}).id for n in range(5)}
    slow = Relay(publisher=HeldConfirms())
    try:
        slow.run_once()  # claimed and sent; the confirms are still "travelling"
        time.sleep(LEASE * 3)
        assert claim(Relay(publisher=HeldConfirms())) == set()
        assert slow.keeper.renewals >= 2
        slow.drain()
    finally:
        slow.close()
    assert set(OutboxMessage.objects.sent().values_list("id", flat=True)) == ids


def test_a_relay_that_stops_making_progress_lets_its_leases_lapse(short_lease, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "RELAY_CONFIRM_TIMEOUT": 0.5}
    ids = {publish("test.lease", {"n": n}).id for n in range(3)}
    stuck = Relay(publisher=HeldConfirms())
    stuck.run_once()
    # No further step for longer than a confirm timeout plus a lease: the keeper gives up.
    time.sleep(0.5 + LEASE * 2 + 0.5)
    other = Relay(publisher=HeldConfirms())
    try:
        assert claim(other) == ids
    finally:
        other.close()
        stuck.keeper.stop()


def test_a_relay_holds_nothing_and_keeps_no_connection_once_it_has_settled(short_lease):
    publish("test.lease", {})
    relay = Relay(publisher=HeldConfirms())
    relay.drain()
    assert relay.keeper._thread is None or not relay.keeper._thread.is_alive()
    relay.close()
