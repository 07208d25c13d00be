"""publish() refuses bad input with a clear error, writes nothing, and leaves the caller's
transaction to the caller."""

import datetime as dt
import decimal
import uuid

import pytest
from django.db import transaction

from inbox_outbox.cloudevents import Outgoing, amqp_properties, encode
from outbox import (
    NotInTransaction,
    OutboxError,
    PayloadTooLarge,
    PublishError,
    publish,
)
from outbox.models import OutboxMessage
from project.shop.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": "", "payload": {}}, "topic must be a non-empty string"),
        ({"topic": None, "payload": {}}, "topic must be a non-empty string"),
        ({"topic": "t" * 256, "payload": {}}, "at most 255 characters"),
        ({"topic": "t", "payload": {"x": object()}}, "not JSON-serialisable"),
        ({"topic": "t", "payload": {}, "key": ""}, "key must be a non-empty string"),
        ({"topic": "t", "payload": {}, "headers": ["x"]}, "headers must be a dict"),
        ({"topic": "t", "payload": {}, "headers": {"h": object()}}, "headers for topic 't'"),
        ({"topic": "t", "payload": {}, "ttl": 0}, "ttl must be positive"),
    ],
)
def test_bad_arguments_raise_a_publish_error_and_write_nothing(kwargs, message):
    with pytest.raises(PublishError, match=message):
        publish(**kwargs)
    assert not OutboxMessage.objects.exists()


def test_an_oversized_payload_names_the_limit_and_the_fix(settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "MAX_PAYLOAD_BYTES": 100}
    with pytest.raises(PayloadTooLarge, match=r"over the limit of 100.*reference") as caught:
        publish("t", {"blob": "x" * 200})
    assert isinstance(caught.value, OutboxError)


def test_require_atomic_refuses_a_publish_outside_a_transaction(settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "REQUIRE_ATOMIC": True}
    with pytest.raises(NotInTransaction, match=r"transaction\.atomic\(\)"):
        publish("t", {})
    with transaction.atomic():
        publish("t", {})
    assert OutboxMessage.objects.count() == 1


def test_the_caller_may_still_commit_its_business_rows_after_a_refused_publish():
    with transaction.atomic():
        Order.objects.create(customer="c", amount=1)
        with pytest.raises(PublishError):
            publish("t", {"x": object()})
    assert Order.objects.count() == 1 and not OutboxMessage.objects.exists()


def test_a_rolled_back_transaction_leaves_no_message():
    with pytest.raises(RuntimeError), transaction.atomic():
        publish("t", {})
        raise RuntimeError
    assert not OutboxMessage.objects.exists()


def test_payloads_with_dates_decimals_and_uuids_are_accepted():
    value = {"at": dt.date(2026, 1, 2), "amount": decimal.Decimal("9.99"), "id": uuid.UUID(int=1)}
    message = publish("t", value)
    assert OutboxMessage.objects.get(id=message.id).payload == {
        "at": "2026-01-02",
        "amount": "9.99",
        "id": "00000000-0000-0000-0000-000000000001",
    }


def test_a_second_publish_with_the_same_dedup_key_returns_the_first_message():
    first = publish("t", {"n": 1}, dedup_key="order-1-paid")
    second = publish("t", {"n": 2}, dedup_key="order-1-paid")
    assert second.id == first.id and OutboxMessage.objects.count() == 1


def test_sequences_count_per_topic_and_key_in_commit_order():
    got = [
        publish(topic, {}, key=key).sequence
        for topic, key in [("a", "k"), ("a", "k"), ("b", "k"), ("a", "j"), ("a", "k")]
    ]
    assert got == [1, 2, 1, 1, 3]
    assert publish("a", {}).sequence is None


def test_the_message_id_is_time_ordered_and_never_changes():
    first, second = publish("t", {}), publish("t", {})
    assert first.id.version == 7 and first.id < second.id
    stored = OutboxMessage.objects.get(id=first.id)
    assert stored.id == first.id and stored.created_at == first.created_at


def test_the_envelope_is_cloudevents_structured_json_with_the_extensions_used():
    now = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)
    message = Outgoing(
        uuid.UUID(int=5),
        "orders.placed",
        "c1",
        7,
        None,
        None,
        '{"order_id":1}',
        {"traceparent": "00-abc-def-01", "tenant": "x"},
        now,
        now + dt.timedelta(seconds=30),
    )
    import json

    assert json.loads(encode(message, source="shop")) == {
        "specversion": "1.0",
        "id": str(uuid.UUID(int=5)),
        "source": "shop",
        "type": "orders.placed",
        "time": "2026-11-24T09:00:00Z",
        "datacontenttype": "application/json",
        "partitionkey": "c1",
        "sequence": "7",
        "traceparent": "00-abc-def-01",
        "data": {"order_id": 1},
    }
    props = amqp_properties(message, now=now)
    assert props["content_type"] == "application/cloudevents+json" and props["delivery_mode"] == 2
    assert props["message_id"] == str(uuid.UUID(int=5)) and props["type"] == "orders.placed"
    assert props["expiration"] == "30000" and props["application_headers"]["tenant"] == "x"
    assert props["timestamp"] == int(now.timestamp())


def test_the_envelope_stays_valid_json_for_strings_that_need_escaping():
    awkward = 'q"uote \\ back/slash \n\t\x00\x1f é € \u2028 😀'
    message = Outgoing(
        uuid.UUID(int=6),
        f"topic {awkward}",
        f"key {awkward}",
        None,
        None,
        None,
        '{"k":"\\u00e9"}',
        {"tracestate": awkward, "traceparent": 42},
        dt.datetime(2026, 11, 24, 9, 0, 0, 123456, tzinfo=dt.UTC),
        None,
    )
    import json

    body = encode(message, source=f"src {awkward}")
    assert json.loads(body) == {
        "specversion": "1.0",
        "id": str(uuid.UUID(int=6)),
        "source": f"src {awkward}",
        "type": f"topic {awkward}",
        "time": "2026-11-24T09:00:00.123456Z",
        "datacontenttype": "application/json",
        "partitionkey": f"key {awkward}",
        "traceparent": "42",
        "tracestate": awkward,
        "data": {"k": "é"},
    }
    assert (
        "é".encode() in body
    )  # not escaped to \u00e9: the same bytes as json.dumps(ensure_ascii=False)
