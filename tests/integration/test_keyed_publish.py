"""A keyed publish() commits its sequence and its row together, inside atomic() or not."""

import pytest
from django.db import DatabaseError, connection

from outbox import publish
from outbox.models import OutboxMessage, Sequence

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FAILING_TOPIC = "test.row-refused"


@pytest.fixture
def refuse_rows_of_one_topic():
    """A trigger that makes the database refuse outbox rows of FAILING_TOPIC: the row's insert
    fails after the sequence was handed out, as a crash between the two statements would."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse_row() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'row refused by the test'; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse_row BEFORE INSERT ON outbox_message FOR EACH ROW "
            f"WHEN (NEW.topic = '{FAILING_TOPIC}') EXECUTE FUNCTION test_refuse_row()"
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_refuse_row ON outbox_message")
        cursor.execute("DROP FUNCTION test_refuse_row()")


def test_a_keyed_publish_outside_atomic_that_fails_leaves_no_gap_in_the_sequence(
    refuse_rows_of_one_topic,
):
    with pytest.raises(DatabaseError):
        publish(FAILING_TOPIC, {"n": 1}, key="k")
    # Autocommit would have committed the counter alone: every consumer would then wait for a
    # sequence 1 that never comes.
    assert not Sequence.objects.filter(topic=FAILING_TOPIC, key="k", last__gt=0).exists()
    assert not OutboxMessage.objects.filter(topic=FAILING_TOPIC).exists()


def test_keyed_publishes_outside_atomic_are_numbered_without_gaps():
    sequences = [publish("test.autocommit", {"n": n}, key="k").sequence for n in range(3)]
    stored = list(
        OutboxMessage.objects.filter(topic="test.autocommit")
        .order_by("sequence")
        .values_list("sequence", flat=True)
    )
    assert sequences == stored == [1, 2, 3]
