"""Hostile deliveries end stored ``rejected`` (reason and raw body) and acknowledged; the good
messages of their batch are handled once; nothing loops, nothing is lost (issue 13)."""

import json
import uuid

import pytest
from django.db import DataError, OperationalError

from inbox import consumer
from inbox.consumer import Receiver
from inbox.models import InboxMessage
from inbox.processing import process_batch, process_delivery
from inbox_outbox import limits
from inbox_outbox.cloudevents import CONTENT_TYPE
from tests.conftest import cloudevent, wait_until
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def event_body(**fields):
    body = cloudevent("test.effect", {}, id=fields.pop("id", None) or str(uuid.uuid4()))
    body.update(fields)
    return body


def delivery(body, *, properties=None, headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw, {"content_type": CONTENT_TYPE, **(properties or {})}, headers or {}


def raw_event(data_literal, **fields):
    """A CloudEvent whose ``data`` is the JSON literal given as text (NaN and the like)."""
    body = json.dumps(event_body(**fields))
    return delivery(body.replace('"data": {}', f'"data": {data_literal}').encode())


DEEP = "[" * 100_000 + "]" * 100_000

HOSTILE = {
    "nul_in_data": delivery(event_body(data={"s": "a\x00b"})),
    "nul_in_id": delivery(event_body(id="id-\x00-nul")),
    "nul_in_partitionkey": delivery(event_body(partitionkey="k\x00", sequence="1")),
    "nul_in_a_header_string": delivery(event_body(), headers={"tenant": "a\x00b"}),
    "nul_in_the_message_id_property": delivery(
        b'{"plain": 1}', properties={"message_id": "m\x00", "type": "test.effect"}
    ),
    "nan_in_data": raw_event("NaN"),
    "infinity_in_data": raw_event("[Infinity]"),
    "1e400_in_data": raw_event('{"x": 1e400}'),
    "lone_surrogate_in_data": raw_event('"\\ud800"'),
    "sequence_2_63": delivery(event_body(partitionkey="k", sequence=str(2**63))),
    "sequence_1e999": delivery(
        json.dumps(event_body(partitionkey="k", sequence=0))
        .replace('"sequence": 0', '"sequence": 1e999')
        .encode()
    ),
    "partitionkey_of_300_characters": delivery(event_body(partitionkey="k" * 300, sequence="1")),
    "source_of_300_characters": delivery(event_body(source="s" * 300)),
    "nested_100k_deep": raw_event(DEEP),
    "integer_of_5000_digits": raw_event("1" * 5000),
    "header_list_with_non_utf8_bytes": delivery(event_body(), headers={"h": [b"\xff\xfe"]}),
    "id_of_201_characters": delivery(event_body(id="x" * 201)),
    "body_not_utf8": delivery(b'\xff\xfe{"specversion": "1.0"}'),
    "body_not_json": delivery(b"this is not JSON at all"),
}


def effects(consumer="effect"):
    return sorted(Effect.objects.filter(consumer=consumer).values_list("message_id", flat=True))


def good():
    return delivery(event_body(id=f"good-{uuid.uuid4()}"))


def good_id(d):
    return json.loads(d[0])["id"]


def rejected_with_body(raw):
    return [row for row in InboxMessage.objects.rejected() if bytes(row.raw_body) == raw]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_delivery_in_a_batch_is_stored_rejected_and_the_good_ones_are_handled_once(
    names, name
):
    before, after = good(), good()
    process_batch([before, HOSTILE[name], after])
    assert effects() == sorted([good_id(before), good_id(after)])
    [row] = rejected_with_body(HOSTILE[name][0])
    assert row.last_error and row.consumer == names.service and row.attempts == 0
    # A redelivery of it is the same row, not a second one (and still no exception).
    process_batch([HOSTILE[name], good()])
    assert len(rejected_with_body(HOSTILE[name][0])) == 1


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_delivery_alone_is_stored_rejected_not_raised(names, name):
    outcomes = process_delivery(*HOSTILE[name])
    assert list(outcomes.values()) == [outcomes[names.service]] and rejected_with_body(
        HOSTILE[name][0]
    )


def test_the_reasons_say_what_was_wrong(names):
    expected = {
        "nul_in_data": "data",
        "nul_in_id": "id",
        "nul_in_partitionkey": "partitionkey",
        "nul_in_a_header_string": "headers",
        "nan_in_data": "NaN",
        "infinity_in_data": "Infinity",
        "1e400_in_data": "1e400",
        "lone_surrogate_in_data": "surrogate",
        "sequence_2_63": "64-bit",
        "sequence_1e999": "1e999",
        "partitionkey_of_300_characters": "over the limit of 255",
        "source_of_300_characters": "source",
        "nested_100k_deep": "nested deeper",
        "integer_of_5000_digits": "digits",
        "header_list_with_non_utf8_bytes": "not UTF-8",
        "id_of_201_characters": "over the limit of 200",
        "body_not_utf8": "not UTF-8",
        "body_not_json": "not JSON",
    }
    for name, phrase in expected.items():
        process_delivery(*HOSTILE[name])
        [row] = rejected_with_body(HOSTILE[name][0])
        assert phrase in row.last_error, (name, row.last_error)


def test_two_long_ids_sharing_their_first_200_characters_are_two_messages_not_one(names):
    first = delivery(event_body(id="p" * 200 + "-first"))
    second = delivery(event_body(id="p" * 200 + "-second"))
    process_batch([first, second])
    process_delivery(*second)
    keys = {row.message_id for row in InboxMessage.objects.all()}
    assert len(rejected_with_body(first[0])) == len(rejected_with_body(second[0])) == 1
    assert len(keys) == 2 and all(len(k) <= 200 for k in keys)
    assert not any(k.startswith("p" * 200) for k in keys), "no id is cut into another's"


def test_a_rejected_delivery_whose_id_is_unusable_gets_a_key_no_real_id_can_equal(names):
    bad = HOSTILE["nul_in_the_message_id_property"]
    process_delivery(*bad)
    [row] = rejected_with_body(bad[0])
    with pytest.raises(limits.LimitError):
        limits.check_id(row.message_id)
    assert "'m\\x00'" in row.last_error, "the reason shows the raw id, escaped"
    # A real message may carry any usable id: it is stored under that id, beside the rejection.
    process_delivery(*delivery(event_body(id=row.message_id.replace("\t", " "))))
    assert InboxMessage.objects.filter(consumer=names.service).count() == 1


def test_a_content_error_the_checks_missed_rejects_that_message_and_never_requeues_the_batch(
    names, monkeypatch
):
    """Defence in depth: if a limit check let a bad value through, the database's DataError is
    still that message's fault."""
    monkeypatch.setattr(limits, "_JSON_NUL", _NeverMatches())
    before, after = good(), good()
    outcomes = Receiver().handle(_messages([before, HOSTILE["nul_in_data"], after]))
    assert outcomes == [consumer.Settle.ACK] * 3
    assert effects() == sorted([good_id(before), good_id(after)])
    [row] = rejected_with_body(HOSTILE["nul_in_data"][0])
    assert "the inbox failed on this message" in row.last_error and "DataError" in row.last_error


class _NeverMatches:
    def search(self, text):
        return None


def test_a_connection_error_requeues_the_batch_and_charges_nothing(names, monkeypatch, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "INBOX_HOLD_SECONDS": 0}

    def down(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(consumer, "process_batch", down)
    monkeypatch.setattr(consumer, "DATABASE_DOWN_PAUSE", 0)
    assert Receiver().handle(_messages([good(), good()])) == [consumer.Settle.REQUEUE] * 2
    assert not InboxMessage.objects.exists()


def test_an_exception_escaping_the_processing_never_leaves_a_batch_unacknowledged(
    names, monkeypatch
):
    """Even a fault of the inbox's own code settles every delivery: the good ones are acked
    and the one the inbox cannot store at all goes to the dead-letter queue."""
    import inbox.processing

    real = inbox.processing._reject

    def broken_reject(alias, delivery, reason, envelope=None):
        raise DataError("the rejection itself cannot be stored")

    monkeypatch.setattr(inbox.processing, "_reject", broken_reject)
    batch = _messages([good(), HOSTILE["nan_in_data"], good()])
    receiver = Receiver()
    outcomes = receiver.handle(batch)
    receiver.settle(batch, outcomes)
    assert outcomes == [consumer.Settle.ACK, consumer.Settle.DEAD_LETTER, consumer.Settle.ACK]
    assert [m.settled for m in batch] == ["ack", "reject", "ack"]
    monkeypatch.setattr(inbox.processing, "_reject", real)


class _FakeMessage:
    """What the receiver reads of a kombu message, and how it was settled."""

    def __init__(self, body, properties, headers):
        self.body, self.properties, self.headers = body, properties, headers
        self.settled = None

    def ack(self):
        self.settled = "ack"

    def requeue(self):
        self.settled = "requeue"

    def reject(self, requeue):
        self.settled = "requeue" if requeue else "reject"


def _messages(deliveries):
    return [_FakeMessage(*d) for d in deliveries]


def test_a_hostile_batch_through_the_receiver_is_acknowledged_in_full(names):
    batch = _messages([good(), *HOSTILE.values(), good()])
    receiver = Receiver()
    receiver.settle(batch, receiver.handle(batch))
    assert [m.settled for m in batch] == ["ack"] * len(batch)
    assert InboxMessage.objects.rejected().count() == len(HOSTILE)
    assert len(effects()) == 2


def test_a_message_id_property_that_is_not_utf8_is_stored_rejected_and_the_worker_lives(
    processes, broker_url, names
):
    """py-amqp used to raise UnicodeDecodeError reading such a frame: the worker exited, and
    the next worker to receive the message exited too."""
    from tests.integration.test_workers import Sender, consumers_idle, start_workers

    [worker] = start_workers(processes, broker_url, names)
    sender = Sender(names)
    try:
        sender.raw(b'{"bad": 1}', to_queue=True, message_id=b"\xff\xfe", type="test.effect")
        sender.raw(b'{"bad": 2}', to_queue=True, message_id="ok-id", type=b"\xc3(")
        sender.raw(json.dumps(event_body(id="after")).encode(), to_queue=True)
    finally:
        sender.close()
    wait_until(lambda: effects() == ["after"], timeout=30, message="the good message after them")
    for body in (b'{"bad": 1}', b'{"bad": 2}'):
        [row] = rejected_with_body(body)
        assert "surrogate" in row.last_error, row.last_error
    assert consumers_idle(broker_url, names.queue) and worker.poll() is None
