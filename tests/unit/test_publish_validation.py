"""publish() refuses bad input with a clear error, writes nothing, and leaves the caller's
transaction to the caller."""

import contextlib
import datetime as dt
import decimal
import uuid

import pytest
from django.db import transaction
from hypothesis import HealthCheck, event, given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st

from inbox_outbox import limits
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
        ({"topic": "é" * 200, "payload": {}}, "400 bytes of UTF-8, over AMQP's limit of 255"),
        ({"topic": "t", "payload": {"x": object()}}, "not JSON-serialisable"),
        ({"topic": "t", "payload": {}, "key": ""}, "key must be a non-empty string"),
        ({"topic": "t", "payload": {}, "headers": ["x"]}, "headers must be a dict"),
        ({"topic": "t", "payload": {}, "headers": {"h": object()}}, "headers for topic 't'"),
        ({"topic": "t", "payload": {}, "ttl": 0}, "ttl must be positive"),
    ],
    ids=lambda value: str(value)[:40] if isinstance(value, str) else None,
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


@pytest.mark.parametrize("dedup", [None, "d-1"], ids=["plain", "with_dedup_key"])
def test_publishing_in_a_transaction_an_earlier_database_error_broke_raises_a_publish_error(
    dedup,
):
    from django.db import DatabaseError, connection

    raised = None
    with contextlib.suppress(_Rollback), transaction.atomic():
        with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
            cursor.execute("SELECT 1/0")
        try:
            publish("t", {}, key="k", dedup_key=dedup)
        except Exception as exc:
            raised = exc
        raise _Rollback
    assert isinstance(raised, PublishError), repr(raised)
    assert "an earlier database error already broke" in str(raised)
    assert not OutboxMessage.objects.exists()


# Property: whatever publish() is given, it raises PublishError or stores a row that reads
# back as what was given (and never a database error, now or at the next statement).

_AWKWARD = st.sampled_from(["\x00", "\ud800", "\udfff", "é", "😀", "\\", '"', "\x7f"])
_CHARS = st.one_of(st.characters(exclude_categories=()), _AWKWARD)
_TEXT = (
    st.text(max_size=40)  # valid Unicode, no NUL: mostly stored
    | st.text(st.characters(blacklist_characters="\x00"), max_size=20)
    | st.text(_CHARS, max_size=40)  # NUL, lone surrogates, anything
    | st.text(_CHARS, min_size=250, max_size=300)
)
_NUMBER = (
    st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats()
    | st.integers(min_value=-(2**70), max_value=2**70)
)
_LEAF = st.none() | st.booleans() | _NUMBER | _TEXT
_JSON = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def _nested(draw):
    value = draw(_LEAF)
    for _ in range(draw(st.integers(min_value=95, max_value=105) | st.just(3_000))):
        value = [value]
    return value


_ARGUMENTS = st.fixed_dictionaries(
    {
        "topic": _TEXT | st.sampled_from(["é" * 200, "é" * 127]),
        "payload": _JSON | _JSON | _JSON | _nested(),
    },
    optional={
        "key": st.none() | _TEXT,
        "headers": st.none() | st.dictionaries(_TEXT, _JSON, max_size=3),
        "dedup_key": st.none() | _TEXT,
        "ttl": st.none()
        | st.floats(min_value=0.001, max_value=1e6)
        | st.floats()
        | st.integers()
        | st.timedeltas()
        | _TEXT
        | st.just(limits.MAX_TTL_SECONDS),
    },
)


def _same(value):
    """``value`` compared as JSON compares it: numbers by value (PostgreSQL's jsonb keeps the
    number, not its spelling: ``1e+23`` reads back as ``100000000000000000000000``)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return decimal.Decimal(value)
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, list):
        return [_same(item) for item in value]
    return {name: _same(item) for name, item in value.items()}


class _Rollback(Exception):
    pass


def _the_inbox_reads(stored):
    """What publish() stored, put on the wire as the relay does, is a delivery the inbox's
    envelope parser accepts whole: both sides apply the same limits."""
    import json

    from inbox.envelope import parse

    message = Outgoing(
        stored.id,
        stored.topic,
        stored.key,
        stored.sequence,
        stored.epoch,
        None,
        json.dumps(stored.payload, ensure_ascii=False),
        stored.headers,
        stored.created_at,
        stored.expires_at,
    )
    properties = amqp_properties(message, now=stored.created_at)
    headers = properties.pop("application_headers", None)
    envelope = parse(encode(message, source="shop"), properties, headers, max_bytes=2**30)
    assert envelope.id == str(stored.id) and envelope.topic == stored.topic
    assert envelope.key == stored.key
    assert _same(envelope.data) == _same(stored.payload)


@settings_profile(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(arguments=_ARGUMENTS)
def test_any_input_raises_a_publish_error_or_stores_a_row_that_round_trips(arguments):
    with contextlib.suppress(_Rollback), transaction.atomic():
        try:
            message = publish(**arguments)
        except PublishError:
            event("refused")
            Order.objects.create(customer="c", amount=1)  # the transaction is still usable
            raise _Rollback from None
        stored = OutboxMessage.objects.get(id=message.id)
        assert stored.topic == arguments["topic"]
        assert stored.key == arguments.get("key")
        assert stored.dedup_key == arguments.get("dedup_key")
        assert _same(stored.payload) == _same(arguments["payload"])
        assert _same(stored.headers) == _same(arguments.get("headers") or {})
        assert (stored.expires_at is None) == (arguments.get("ttl") is None)
        _the_inbox_reads(stored)
        event("stored")
        raise _Rollback
    assert not OutboxMessage.objects.exists()


# -- what the database, strict JSON or AMQP cannot hold is refused inside publish() (issue 13)


def nested(depth):
    """``depth`` arrays, one inside the other."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


DEEP = nested(100_000)

REFUSED = {
    "nan_payload": ({"topic": "t", "payload": {"x": float("nan")}}, "NaN"),
    "infinite_payload": ({"topic": "t", "payload": [float("inf")]}, "infinite"),
    "nul_in_payload": ({"topic": "t", "payload": {"x": "a\x00b"}}, "NUL"),
    "nul_in_a_payload_key": ({"topic": "t", "payload": {"a\x00": 1}}, "NUL"),
    "nul_in_topic": ({"topic": "t\x00", "payload": {}}, "NUL"),
    "nul_in_key": ({"topic": "t", "payload": {}, "key": "k\x00"}, "NUL"),
    "nul_in_a_header_value": ({"topic": "t", "payload": {}, "headers": {"h": "\x00"}}, "NUL"),
    "nul_in_a_header_name": ({"topic": "t", "payload": {}, "headers": {"h\x00": 1}}, "NUL"),
    "nul_in_dedup_key": ({"topic": "t", "payload": {}, "dedup_key": "d\x00"}, "NUL"),
    "lone_surrogate_in_payload": ({"topic": "t", "payload": "\ud800"}, "surrogate"),
    "lone_surrogate_in_topic": ({"topic": "t\udc00", "payload": {}}, "surrogate"),
    "lone_surrogate_in_key": ({"topic": "t", "payload": {}, "key": "\ud800"}, "surrogate"),
    "payload_nested_100k_deep": ({"topic": "t", "payload": DEEP}, "nested deeper"),
    "payload_nested_101_deep": ({"topic": "t", "payload": nested(101)}, "101 levels"),
    "ttl_nan": ({"topic": "t", "payload": {}, "ttl": float("nan")}, "ttl must be positive"),
    "ttl_abc": ({"topic": "t", "payload": {}, "ttl": "abc"}, "number of seconds"),
    "ttl_1e12": ({"topic": "t", "payload": {}, "ttl": 1e12}, "ten years"),
    "ttl_infinite": ({"topic": "t", "payload": {}, "ttl": float("inf")}, "ten years"),
    "ttl_true": ({"topic": "t", "payload": {}, "ttl": True}, "number of seconds"),
    "dedup_key_of_300_characters": (
        {"topic": "t", "payload": {}, "dedup_key": "d" * 300},
        "over the limit of 255",
    ),
    "topic_over_255_bytes_of_utf8": ({"topic": "é" * 200, "payload": {}}, "255"),
    "header_name_over_255_bytes": (
        {"topic": "t", "payload": {}, "headers": {"h" * 256: 1}},
        "field name",
    ),
    "header_integer_past_64_bits": (
        {"topic": "t", "payload": {}, "headers": {"n": 2**64}},
        "64 bits",
    ),
    "nan_in_a_header": ({"topic": "t", "payload": {}, "headers": {"h": float("nan")}}, "NaN"),
    "lone_surrogate_in_a_header": (
        {"topic": "t", "payload": {}, "headers": {"h": "\ud800"}},
        "surrogate",
    ),
    "header_name_over_255_bytes_of_utf8": (
        {"topic": "t", "payload": {}, "headers": {"é" * 128: 1}},
        "256 bytes of UTF-8, over AMQP's limit of 255",
    ),
    "header_name_not_a_string": ({"topic": "t", "payload": {}, "headers": {1: "v"}}, "string"),
    "lone_surrogate_in_dedup_key": (
        {"topic": "t", "payload": {}, "dedup_key": "\udc80"},
        "surrogate",
    ),
    "integer_of_5000_digits": ({"topic": "t", "payload": 10**5000}, "not JSON-serialisable"),
    "ttl_integer_beyond_a_double": ({"topic": "t", "payload": {}, "ttl": 10**400}, "ten years"),
    "ttl_timedelta_over_ten_years": (
        {"topic": "t", "payload": {}, "ttl": dt.timedelta(days=999_999_999)},
        "ten years",
    ),
    "nested_header_integer_past_64_bits": (
        {"topic": "t", "payload": {}, "headers": {"n": {"m": [-(2**63) - 1]}}},
        "64 bits",
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_cannot_be_stored_or_carried_raises_a_publish_error_inside_publish_itself(name):
    kwargs, phrase = REFUSED[name]
    with transaction.atomic():
        Order.objects.create(customer="c", amount=1)
        with pytest.raises(PublishError, match=phrase):
            publish(**kwargs)
        Order.objects.create(customer="d", amount=2)  # the next statement is not poisoned
    # ... and neither is COMMIT: the business rows are there, no message is.
    assert Order.objects.count() == 2 and not OutboxMessage.objects.exists()


def test_a_payload_at_the_depth_limit_is_accepted():
    with transaction.atomic():
        message = publish("t", nested(100))
    assert OutboxMessage.objects.get(id=message.id).payload == nested(100)


def test_a_ttl_of_ten_years_is_accepted_and_a_timedelta_too():
    with transaction.atomic():
        publish("t", {}, ttl=10 * 365 * 24 * 3600)
        publish("t", {}, ttl=dt.timedelta(days=1))
    assert OutboxMessage.objects.filter(expires_at__isnull=False).count() == 2


def test_publishing_in_a_transaction_broken_by_a_caught_database_error_raises_a_publish_error():
    from django.db import DatabaseError, connection

    with transaction.atomic():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1/0")
        except DatabaseError:
            pass  # caught, but the transaction is now aborted
        with pytest.raises(PublishError, match="already broke"):
            publish("t", {})
        transaction.set_rollback(True)
    assert not OutboxMessage.objects.exists()


def test_publishing_after_a_caught_integrity_error_of_the_orm_raises_a_publish_error():
    from django.db import IntegrityError

    from tests.testapp.models import Account

    Account.objects.create(name="taken")
    with transaction.atomic():
        with contextlib.suppress(IntegrityError):
            Account.objects.create(name="taken")
        with pytest.raises(PublishError, match="already broke"):
            publish("t", {})
        transaction.set_rollback(True)
    assert not OutboxMessage.objects.exists()


def test_a_database_error_caught_inside_a_savepoint_leaves_publish_usable():
    from django.db import DatabaseError, connection

    with transaction.atomic():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT 1/0")
        except DatabaseError:
            pass
        publish("t", {})
    assert OutboxMessage.objects.count() == 1
