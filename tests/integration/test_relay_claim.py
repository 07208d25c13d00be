"""The relay's claim: it finds the claimable rows however many blocked ones precede them, keeps
each key's run in order, and shares a batch between keyless and keyed messages."""

import datetime as dt
import json

import pytest
from django.db import connection, transaction
from django.utils import timezone

from outbox import publish
from outbox.models import OutboxMessage
from outbox.operations import new_epoch
from outbox.publisher import BatchResult, Publisher
from outbox.relay import Relay
from tests.conftest import read_queue

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


class Records(Publisher):
    """Confirms everything it is given and remembers each batch."""

    def __init__(self) -> None:
        self.batches: list[list] = []

    def send(self, batch):
        self.batches.append(list(batch))
        self.result = BatchResult(sent={m.id for m in batch})

    def collect(self):
        return self.result

    @property
    def sent(self) -> list:
        return [m for batch in self.batches for m in batch]


def hold_in_backoff(message_id) -> None:
    OutboxMessage.objects.filter(id=message_id).update(
        status="failed", attempts=1, available_at=timezone.now() + dt.timedelta(hours=1)
    )


def test_a_key_in_backoff_with_2000_successors_does_not_stop_other_messages(
    names, bind_queue, broker_url
):
    queue = bind_queue("claim.#")
    with transaction.atomic():
        hot = [publish("claim.event", {"n": n}, key="hot") for n in range(2001)]
    hold_in_backoff(hot[0].id)
    keyless = publish("claim.event", {"free": True})
    cold = publish("claim.event", {"cold": True}, key="cold")

    relay = Relay()
    try:
        settled = relay.drain()
    finally:
        relay.close()

    delivered = {m.properties["message_id"] for m in read_queue(broker_url, queue)}
    assert delivered == {str(keyless.id), str(cold.id)}
    assert settled == 2
    statuses = set(OutboxMessage.objects.filter(key="hot").values_list("status", flat=True))
    assert statuses == {"failed", "pending"}  # the hot key waits for its head, in order


def test_a_blocked_head_holds_back_its_whole_key_however_long_the_run(names):
    with transaction.atomic():
        hot = [publish("t", {"n": n}, key="hot") for n in range(30)]
    hold_in_backoff(hot[0].id)
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=5)
    relay.drain()
    assert publisher.sent == []
    OutboxMessage.objects.filter(id=hot[0].id).update(available_at=timezone.now())
    relay.drain()
    assert [m.sequence for m in publisher.sent] == list(range(1, 31))


def test_a_key_whose_head_is_leased_elsewhere_is_skipped_and_its_run_kept_whole(names):
    with transaction.atomic():
        a = [publish("t", {"n": n}, key="a") for n in range(4)]
        b = [publish("t", {"n": n}, key="b") for n in range(4)]
    OutboxMessage.objects.filter(id=a[0].id).update(
        lease_owner="elsewhere", lease_until=timezone.now() + dt.timedelta(minutes=1)
    )
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=10)
    relay.run_once()
    relay.close()
    assert [m.id for m in publisher.sent] == [m.id for m in b]


def test_a_run_cut_by_the_batch_size_is_a_prefix_and_the_rest_follows_in_order(names):
    with transaction.atomic():
        rows = [publish("t", {"n": n}, key="k") for n in range(12)]
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=5)
    relay.drain()
    assert [len(b) for b in publisher.batches] == [5, 5, 2]
    assert [m.id for m in publisher.sent] == [m.id for m in rows]


def test_a_row_of_a_run_locked_by_another_claim_ends_the_run_there(names):
    with transaction.atomic():
        rows = [publish("t", {"n": n}, key="k") for n in range(5)]
    import psycopg

    from tests.conftest import test_database_url

    # Another transaction holds a row lock on the third message, as a concurrent claim would.
    with psycopg.connect(test_database_url()) as other:
        other.execute("SELECT 1 FROM outbox_message WHERE id = %s FOR UPDATE", [rows[2].id])
        publisher = Records()
        relay = Relay(publisher=publisher, batch_size=10)
        relay.run_once()
        relay._finish()
        assert [m.id for m in publisher.sent] == [rows[0].id, rows[1].id]
        other.rollback()
    relay.drain()
    relay.close()
    assert [m.id for m in publisher.sent] == [m.id for m in rows]


def test_keyless_and_keyed_backlogs_share_a_batch(names):
    with transaction.atomic():
        keyless = [publish("t", {"n": n}) for n in range(20)]
        keyed = [publish("t", {"n": n}, key=f"k{n}") for n in range(20)]
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=10)
    relay.run_once()
    relay.close()
    [batch] = publisher.batches
    assert sum(m.key is None for m in batch) == 5 and sum(m.key is not None for m in batch) == 5
    assert [m.id for m in batch if m.key is None] == [m.id for m in keyless[:5]]
    assert len(keyed) == 20


def test_keys_are_served_in_turn_so_no_key_starves_behind_busy_ones(names):
    # Keys "a" to "d" always have more than a batch waiting; "z" must still get its turn.
    with transaction.atomic():
        for key in "abcd":
            for n in range(50):
                publish("t", {"n": n}, key=key)
        z = publish("t", {}, key="z")
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=10)
    for _ in range(6):
        relay.run_once()
    relay.close()
    assert z.id in {m.id for m in publisher.sent}


def test_the_claim_reads_each_rows_own_payload_and_headers(names):
    with transaction.atomic():
        a = publish("t", {"a": 1}, key="k", headers={"traceparent": "00-ab-cd-01"})
        b = publish("t", {"b": 2})
    publisher = Records()
    relay = Relay(publisher=publisher)
    relay.drain()
    by_id = {m.id: m for m in publisher.sent}
    assert json.loads(by_id[a.id].payload_json) == {"a": 1}
    assert by_id[a.id].headers == {"traceparent": "00-ab-cd-01"}
    assert json.loads(by_id[b.id].payload_json) == {"b": 2} and by_id[b.id].headers == {}


def test_leases_are_written_on_the_database_clock(names):
    message = publish("t", {})
    relay = Relay(publisher=Records())
    batch = relay._claim().batch
    assert [m.id for m in batch] == [message.id]
    with connection.cursor() as cursor:
        cursor.execute("SELECT lease_until - now() FROM outbox_message WHERE id = %s", [message.id])
        [[remaining]] = cursor.fetchall()
    lease = relay.keeper.lease_seconds
    assert dt.timedelta(seconds=lease - 2) < remaining <= dt.timedelta(seconds=lease)
    relay.close()


def two_epochs(key: str = "k", *, old: int = 5, sent: int = 2, new: int = 3) -> tuple[list, list]:
    """``old`` messages of ``key`` in one epoch, the first ``sent`` of them confirmed, then
    ``new`` in a later epoch (the counter restarted by ``outbox_new_epoch``, as after a
    restore): the older epoch's unsent sequences (3, 4, 5) are above the newer's (1, 2, 3), so
    a head chosen by sequence alone would be the newer epoch's."""
    with transaction.atomic():
        before = [publish("t", {"n": n}, key=key) for n in range(old)]
    OutboxMessage.objects.filter(id__in=[m.id for m in before[:sent]]).update(
        status="sent", sent_at=timezone.now()
    )
    new_epoch()
    with transaction.atomic():
        after = [publish("t", {"n": n}, key=key) for n in range(new)]
    assert before[0].epoch < after[0].epoch
    return before[sent:], after


def test_a_keys_head_is_the_oldest_epochs_lowest_unsent_sequence(names):
    before, after = two_epochs()
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=10)
    relay.run_once()
    relay._finish()
    assert [m.id for m in publisher.sent] == [m.id for m in before]
    relay.drain()
    relay.close()
    assert [m.id for m in publisher.sent] == [m.id for m in before + after]


@pytest.mark.parametrize("blocked", [0, 1], ids=["head", "second"])
def test_an_older_epochs_row_in_backoff_holds_back_the_newer_epoch(names, blocked):
    before, after = two_epochs()
    hold_in_backoff(before[blocked].id)
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=10)
    relay.drain()
    assert [m.id for m in publisher.sent] == [m.id for m in before[:blocked]]
    OutboxMessage.objects.filter(id=before[blocked].id).update(available_at=timezone.now())
    relay.drain()
    relay.close()
    assert [m.id for m in publisher.sent] == [m.id for m in before + after]


def test_an_older_epochs_head_leased_elsewhere_holds_back_the_newer_epoch(names):
    before, after = two_epochs()
    OutboxMessage.objects.filter(id=before[0].id).update(
        lease_owner="elsewhere", lease_until=timezone.now() + dt.timedelta(minutes=1)
    )
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=10)
    relay.drain()
    assert publisher.sent == []
    OutboxMessage.objects.filter(id=before[0].id).update(lease_until=timezone.now())
    relay.drain()
    relay.close()
    assert [m.id for m in publisher.sent] == [m.id for m in before + after]


def test_a_batch_sends_each_keys_rows_in_epoch_then_sequence_order(names):
    two_epochs(key="a")
    two_epochs(key="b", old=3, sent=0, new=6)
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=50)
    relay.drain()
    relay.close()
    assert len(publisher.sent) == 3 + 3 + 3 + 6
    for batch in publisher.batches:
        for key in "ab":
            positions = [(m.epoch, m.sequence) for m in batch if m.key == key]
            assert positions == sorted(positions)
    for key in "ab":
        positions = [(m.epoch, m.sequence) for m in publisher.sent if m.key == key]
        assert positions == sorted(positions)
