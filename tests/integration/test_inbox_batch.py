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
