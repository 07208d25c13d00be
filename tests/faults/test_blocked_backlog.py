"""A backlog larger than any claim window, with a blocked key at its head (issue 13).

The relay's claim decides in SQL which rows may go, walking from key to key; rows queued behind
a blocked head cost it nothing. Under the old bounded window (``CANDIDATE_WINDOW`` times the batch,
400 rows at the suite's batch of 100) this backlog stopped every other key.
"""

import pytest
from django.db import connection, transaction

from outbox import publish
from outbox.models import OutboxMessage
from project.shop.models import Order
from tests.conftest import wait_until
from tests.faults.harness import Producer, System, check_books, describe, settle
from tests.faults.test_scenarios import N, wait_consuming
from tests.testapp.models import Effect

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

#: Rows of the blocked key, ahead of all other traffic in id order: 7.5 times the old window.
BLOCKED = 3000


@pytest.fixture
def system(processes):
    return System(processes)


def test_a_backlog_larger_than_any_claim_with_a_blocked_key_at_its_head_lets_other_keys_flow(
    system, names, broker_url
):
    """12. 3,000 messages of key ``hot`` committed first, their head in backoff for an hour;
    then 2,000 transactions over 40 other keys. The other keys are all handled while ``hot``
    waits; once its head is due, ``hot`` drains in order and the books balance."""
    with transaction.atomic():
        for n in range(BLOCKED):
            order = Order.objects.create(customer=f"hot{n}", amount=1)
            publish("test.effect", {"order_id": order.pk, "n": -1 - n}, key="hot")
    head = OutboxMessage.objects.filter(key="hot").order_by("sequence").first()
    assert head is not None and head.sequence == 1
    with connection.cursor() as cursor:  # backoff on the database's clock
        cursor.execute(
            "UPDATE outbox_message SET status = 'failed', attempts = 1, "
            "available_at = now() + interval '1 hour' WHERE id = %s",
            [head.id],
        )
    system.relay()
    system.worker()
    wait_consuming(broker_url, names.queue, 1)
    producer = Producer(N, keys=40)
    producer.start()
    assert producer.done.wait(180), "the producer did not finish"

    def others_handled() -> bool:
        handled = Effect.objects.filter(consumer="effect").exclude(key="hot").count()
        return handled >= producer.expected

    wait_until(others_handled, timeout=180, message=lambda: f"other keys to flow: {describe()}")
    assert not Effect.objects.filter(key="hot").exists(), "a hot message passed its head"
    assert OutboxMessage.objects.filter(key="hot").exclude(status="sent").count() == BLOCKED

    with connection.cursor() as cursor:
        cursor.execute("UPDATE outbox_message SET available_at = now() WHERE id = %s", [head.id])
    settle(producer=producer, timeout=240)
    books = check_books(minimum=producer.expected + BLOCKED)
    assert books["keys"] == 41
    assert Effect.objects.filter(consumer="effect", key="hot").count() == BLOCKED
