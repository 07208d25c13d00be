"""A batch is one transaction when all goes well, and exactly the one-at-a-time outcome when not."""

import json

import pytest

from inbox.models import InboxMessage
from inbox.processing import process_batch
from inbox_outbox.cloudevents import CONTENT_TYPE
from tests.conftest import cloudevent
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def event(data, *, id=None, key=None, sequence=None, topic="test.effect"):
    body = cloudevent(topic, data, id=id, key=key, sequence=sequence)
    return json.dumps(body).encode(), {"content_type": CONTENT_TYPE}, {}


def effects(consumer="effect"):
    return list(
        Effect.objects.filter(consumer=consumer).order_by("id").values_list("message_id", flat=True)
    )


def test_a_clean_batch_handles_every_message_once_for_each_consumer(names):
    batch = [event({"n": i}, id=f"m{i}") for i in range(10)]
    process_batch(batch)
    assert effects() == [f"m{i}" for i in range(10)]
    assert sorted(effects("audit")) == sorted(f"m{i}" for i in range(10))
    assert InboxMessage.objects.done().count() == 20


def test_a_batch_repeating_a_message_has_one_effect(names):
    process_batch([event({}, id="same"), event({}, id="other"), event({}, id="same")])
    assert sorted(effects()) == ["other", "same"]


def test_a_failing_handler_rolls_back_the_batch_and_each_message_is_then_handled_alone(
    names, settings
):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "INBOX_BACKOFF_BASE": 60}
    process_batch(
        [event({}, id="before"), event({"fail_times": 1}, id="flaky"), event({}, id="after")]
    )
    assert sorted(effects()) == ["after", "before"]
    flaky = InboxMessage.objects.get(consumer__endswith=":effect", message_id="flaky")
    assert (
        flaky.status == "failed"
        and flaky.attempts == 1
        and "failing on purpose" in flaky.last_error
    )
    # The other consumer of the failing message is unaffected by its failure.
    assert sorted(effects("audit")) == ["after", "before", "flaky"]


def test_a_malformed_delivery_in_a_batch_is_rejected_and_the_rest_handled(names):
    process_batch([event({}, id="good"), (b"not json", {"message_id": "bad"}, {})])
    assert effects() == ["good"]
    bad = InboxMessage.objects.get(message_id="bad")
    assert bad.status == "rejected" and bytes(bad.raw_body) == b"not json"


def test_a_batch_redelivered_after_commit_changes_nothing(names):
    batch = [event({}, id=f"r{i}") for i in range(5)]
    process_batch(batch)
    process_batch(batch)
    assert sorted(effects()) == [f"r{i}" for i in range(5)]


def test_keyed_messages_out_of_order_in_a_batch_are_handled_in_sequence(names):
    process_batch(
        [
            event({}, id="k3", key="k", sequence=3),
            event({}, id="k1", key="k", sequence=1),
            event({}, id="k2", key="k", sequence=2),
        ]
    )
    assert effects() == ["k1", "k2", "k3"]
    assert not InboxMessage.objects.waiting().exists()


def inbox_inserts(queries):
    return [q["sql"] for q in queries if q["sql"].startswith("INSERT INTO inbox_message")]


def test_the_keyless_rows_of_a_clean_batch_are_inserted_in_one_statement(names):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        process_batch([event({"n": i}, id=f"b{i}") for i in range(20)])
    assert len(inbox_inserts(queries.captured_queries)) == 1
    assert InboxMessage.objects.done().count() == 40  # two consumers of each message


def test_a_batch_with_a_duplicate_a_rejected_member_and_a_failing_handler_settles_each_alone(
    names, settings
):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "INBOX_BACKOFF_BASE": 60}
    process_batch([event({}, id="seen")])
    process_batch(
        [
            event({}, id="first"),
            event({}, id="seen"),  # processed by an earlier batch
            (b"not json", {"message_id": "bad"}, {}),
            event({"fail_times": 1}, id="flaky"),
            event({}, id="twice"),
            event({}, id="k1", key="k", sequence=1),
            event({}, id="twice"),  # the same delivery again, in the same batch
        ]
    )
    assert sorted(effects()) == ["first", "k1", "seen", "twice"]
    assert sorted(effects("audit")) == ["first", "flaky", "k1", "seen", "twice"]
    rows = {
        (row.consumer.rsplit(":", 1)[-1], row.message_id): row.status
        for row in InboxMessage.objects.all()
    }
    assert rows[("effect", "flaky")] == "failed" and rows[("audit", "flaky")] == "done"
    assert rows[(names.service, "bad")] == "rejected"
    assert [rows[("effect", m)] for m in ("first", "seen", "twice", "k1")] == ["done"] * 4
    assert len(rows) == 11


def test_a_bulk_insert_finding_a_row_already_there_runs_no_handler_for_it(names):
    """The row came from another worker (its batch committed first): the handler is skipped."""
    process_batch([event({}, id="taken")])
    Effect.objects.all().delete()
    process_batch([event({}, id="taken"), event({}, id="new")])
    assert effects() == ["new"]


def test_a_batch_locks_and_settles_each_stream_once_and_drains_none_when_nothing_waits(names):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    batch = [event({}, id=f"{key}{n}", key=key, sequence=n) for n in (1, 2, 3) for key in "ab"]
    with CaptureQueriesContext(connection) as queries:
        process_batch(batch)
    statements = [q["sql"] for q in queries.captured_queries]
    progress = [s for s in statements if "inbox_key_progress" in s]
    # Two consumers (effect, audit) x two keys: one lock of all four, one write of all four.
    assert len([s for s in progress if s.startswith("INSERT")]) == 1
    assert len([s for s in progress if s.startswith("UPDATE")]) == 1
    assert not [s for s in statements if "SKIP LOCKED" in s]  # no drain: nothing waits
    assert effects() == ["a1", "b1", "a2", "b2", "a3", "b3"]


def test_a_later_batch_drains_a_message_left_waiting_by_an_earlier_one(names):
    process_batch([event({}, id="k2", key="k", sequence=2), event({}, id="other")])
    assert InboxMessage.objects.waiting().count() == 2  # k2, for both consumers
    process_batch([event({}, id="k1", key="k", sequence=1), event({}, id="another")])
    assert effects() == ["other", "k1", "another", "k2"]  # k2 drained after the commit
    assert not InboxMessage.objects.waiting().exists()


def test_the_keyed_and_keyless_rows_of_a_clean_batch_are_inserted_in_one_statement(names):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    batch = [event({}, id=f"{key}{n}", key=key, sequence=n) for n in (2, 1, 3) for key in "ab"]
    batch += [event({}, id=f"plain{n}") for n in range(3)]
    with CaptureQueriesContext(connection) as queries:
        process_batch(batch)
    assert len(inbox_inserts(queries.captured_queries)) == 1
    # 2 and 3 of each key came before 1: stored waiting, drained after the commit, per stream.
    assert effects() == ["a1", "b1", "plain0", "plain1", "plain2", "a2", "a3", "b2", "b3"]
    assert InboxMessage.objects.done().count() == 18  # two consumers of each message


def test_a_batch_stores_each_keyed_message_with_the_status_its_position_gives_it(names):
    process_batch([event({}, id="k1", key="k", sequence=1)])
    process_batch(
        [
            event({}, id="k3", key="k", sequence=3),  # 2 is missing: waits
            event({}, id="k1-again", key="k", sequence=1),  # settled already: stale
            event({}, id="j1", key="j", sequence=1),  # another stream: runs
        ]
    )
    rows = {
        (row.consumer.rsplit(":", 1)[-1], row.message_id): row for row in InboxMessage.objects.all()
    }
    assert {m: rows["effect", m].status for m in ("k1", "k3", "k1-again", "j1")} == {
        "k1": "done",
        "k3": "waiting",
        "k1-again": "stale",
        "j1": "done",
    }
    assert "stale" in rows["effect", "k1-again"].last_error
    assert rows["effect", "k3"].raw_body and rows["effect", "k1-again"].raw_body
    assert effects() == ["k1", "j1"]


def test_a_keyed_message_twice_in_one_batch_runs_once_and_its_stream_moves_on(names):
    process_batch(
        [
            event({}, id="k1", key="k", sequence=1),
            event({}, id="k1", key="k", sequence=1),  # the same delivery again
            event({}, id="k2", key="k", sequence=2),
        ]
    )
    assert effects() == ["k1", "k2"]
    assert not InboxMessage.objects.exclude(status="done").exists()


def test_a_message_stored_waiting_then_delivered_again_with_its_predecessor_runs_once(names):
    """Its row is there already (waiting), so the batch's plan, which had it run, does not
    hold: the batch is handled one at a time, and the waiting row is drained in order."""
    process_batch([event({}, id="k2", key="k", sequence=2)])
    assert InboxMessage.objects.waiting().count() == 2  # for both consumers
    process_batch(
        [
            event({}, id="k1", key="k", sequence=1),
            event({}, id="k2", key="k", sequence=2),  # redelivered: its ack was lost
            event({}, id="k3", key="k", sequence=3),
        ]
    )
    assert effects() == ["k1", "k2", "k3"]
    assert not InboxMessage.objects.exclude(status="done").exists()
