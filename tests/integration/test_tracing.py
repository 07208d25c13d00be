"""Traces: create in publish(), send per relay batch, process per handler run (in process)."""

import json
import uuid

import pytest
from django.db import transaction
from opentelemetry import trace

from inbox.processing import process_batch
from inbox.testing import deliver_outbox
from inbox_outbox.cloudevents import encode
from outbox import publish
from outbox.models import OutboxMessage
from tests import spans
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def exporter():
    exporter = spans.in_memory()
    yield exporter
    spans.uninstall()


def finished(exporter, name_prefix):
    return [s for s in exporter.get_finished_spans() if s.name.startswith(name_prefix)]


def test_publish_starts_a_create_span_in_the_callers_trace_and_stores_its_context(exporter):
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("POST /orders") as request, transaction.atomic():
        message = publish("test.traced", {"n": 1}, key="k")
    (create,) = finished(exporter, "create")
    assert create.kind is trace.SpanKind.PRODUCER
    assert create.parent.span_id == request.get_span_context().span_id
    assert create.attributes["messaging.system"] == "rabbitmq"
    assert create.attributes["messaging.operation.type"] == "create"
    assert create.attributes["messaging.message.id"] == str(message.id)
    assert create.attributes["messaging.rabbitmq.destination.routing_key"] == "test.traced"
    stored = OutboxMessage.objects.get(id=message.id).headers
    context = create.get_span_context()
    assert stored["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")


def test_a_traceparent_the_caller_gave_is_kept(exporter):
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with transaction.atomic():
        message = publish("test.traced", {}, headers={"traceparent": given})
    assert OutboxMessage.objects.get(id=message.id).headers == {"traceparent": given}


def test_the_relay_sends_a_linked_batch_and_the_inbox_processes_under_the_create_span(exporter):
    with trace.get_tracer("test").start_as_current_span("POST /orders"), transaction.atomic():
        first = publish("test.traced", {"n": 1})
        second = publish("test.traced", {"n": 2})
    outcomes = deliver_outbox()
    assert [next(iter(o.values())).value for o in outcomes] == [
        "done",
        "done",
    ]
    creates = {s.attributes["messaging.message.id"]: s for s in finished(exporter, "create")}
    (send,) = finished(exporter, "send")
    assert send.kind is trace.SpanKind.CLIENT
    assert send.attributes["messaging.batch.message_count"] == 2
    assert send.attributes["inbox_outbox.confirmed"] == 2
    assert {link.context.span_id for link in send.links} == {
        creates[str(m.id)].get_span_context().span_id for m in (first, second)
    }
    processes = finished(exporter, "process")
    assert len(processes) == 2
    for process in processes:
        create = creates[process.attributes["messaging.message.id"]]
        assert process.kind is trace.SpanKind.CONSUMER
        assert process.parent.span_id == create.get_span_context().span_id
        assert process.attributes["inbox_outbox.outcome"] == "done"
        assert process.attributes["inbox_outbox.attempt"] == 1
        assert process.attributes["messaging.consumer.group.name"].endswith(":traced")
    works = finished(exporter, "handler work")
    assert {w.parent.span_id for w in works} == {p.get_span_context().span_id for p in processes}
    assert Effect.objects.filter(consumer="traced").count() == 2


def test_a_duplicate_and_a_failure_say_so_on_their_process_spans(exporter):
    with transaction.atomic():
        publish("test.effect", {"poison": True})
    deliver_outbox()
    message = OutboxMessage.objects.get()
    OutboxMessage.objects.filter(id=message.id).update(status="pending")
    deliver_outbox()
    spans_by_outcome = {}
    for s in finished(exporter, "process"):
        spans_by_outcome.setdefault(s.attributes["inbox_outbox.outcome"], []).append(s)
    failed = spans_by_outcome["failed"]
    assert failed and failed[0].attributes["error.type"] == "ValueError"
    assert failed[0].status.status_code is trace.StatusCode.ERROR
    assert spans_by_outcome["duplicate"]


def test_a_batch_has_one_process_span_and_each_message_a_linked_one_inside_it(exporter):
    with transaction.atomic():
        messages = [publish("test.traced", {"n": i}) for i in range(3)]
    creates = {s.attributes["messaging.message.id"]: s for s in finished(exporter, "create")}
    deliveries = []
    for m in messages:
        event = type("E", (), {})()
        for name in ("id", "topic", "key", "sequence", "epoch", "voids", "headers", "created_at"):
            setattr(event, name, getattr(m, name))
        event.payload_json = json.dumps(m.payload)
        deliveries.append((encode(event, source="other"), {"message_id": str(m.id)}, m.headers))
    process_batch(deliveries)
    (batch,) = [
        s for s in finished(exporter, "process") if "messaging.batch.message_count" in s.attributes
    ]
    assert batch.attributes["messaging.batch.message_count"] == 3
    members = [s for s in finished(exporter, "process") if s is not batch]
    assert len(members) == 3
    for member in members:
        assert member.parent.span_id == batch.get_span_context().span_id
        (link,) = member.links
        create = creates[member.attributes["messaging.message.id"]]
        assert link.context.span_id == create.get_span_context().span_id


def test_a_rejected_delivery_has_a_process_span_saying_rejected(exporter):
    from inbox.processing import process_delivery

    process_delivery(b"not json", {"message_id": str(uuid.uuid4()), "type": "test.traced"}, {})
    (span,) = finished(exporter, "process")
    assert span.attributes["inbox_outbox.outcome"] == "rejected"
    assert span.attributes["error.type"] == "rejected"


def relayed_deliveries(broker_url, count):
    """Publish ``count`` messages in one traced transaction, relay them to the real broker,
    and take them from the service queue unacknowledged: (deliveries, create spans by id)."""
    from inbox.consumer import QueueConsumer
    from outbox.relay import Relay
    from tests.conftest import wait_until

    queue_consumer = QueueConsumer(broker_url)
    queue_consumer.declare()
    with trace.get_tracer("test").start_as_current_span("POST /orders"), transaction.atomic():
        for n in range(count):
            publish("test.traced", {"n": n})
    relay = Relay()
    try:
        relay.drain()
    finally:
        relay.close()
    queue = queue_consumer.queue(queue_consumer.connection.default_channel)
    deliveries = []

    def take():
        message = queue.get(no_ack=False)
        if message is not None:
            deliveries.append(message)
        return len(deliveries) == count

    wait_until(take, timeout=10, message="the relayed messages in the queue")
    return queue_consumer, deliveries


def creates_by_id(exporter):
    return {s.attributes["messaging.message.id"]: s for s in finished(exporter, "create")}


def test_a_batch_acknowledged_at_once_has_one_ack_span_linked_to_every_message(
    exporter, names, broker_url, settings
):
    from inbox.consumer import Receiver

    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "INBOX_BATCH_SIZE": 3}
    queue_consumer, deliveries = relayed_deliveries(broker_url, 3)
    try:
        receiver = Receiver()
        for delivery in deliveries:
            receiver(delivery)  # the third fills the batch: handled, then settled
        assert receiver.handled == 3
    finally:
        queue_consumer.close()
    creates = creates_by_id(exporter)
    (ack,) = finished(exporter, "ack ")
    assert ack.name == f"ack {names.queue}"
    assert ack.kind is trace.SpanKind.CLIENT
    assert ack.attributes["messaging.operation.type"] == "settle"
    assert ack.attributes["messaging.operation.name"] == "ack"
    assert ack.attributes["messaging.batch.message_count"] == 3
    assert ack.attributes["messaging.consumer.group.name"] == names.service
    assert {
        (link.attributes["messaging.message.id"], link.context.span_id) for link in ack.links
    } == {(id, span.get_span_context().span_id) for id, span in creates.items()}
    (batch,) = [s for s in finished(exporter, "process") if s.parent is None]
    assert ack.start_time >= batch.end_time  # acknowledged after the batch committed


def test_a_message_settled_alone_is_acked_nacked_or_rejected_under_its_creation_context(
    exporter, names, broker_url
):
    from inbox.consumer import Receiver, Settle

    queue_consumer, deliveries = relayed_deliveries(broker_url, 3)
    outcomes = [Settle.ACK, Settle.REQUEUE, Settle.DEAD_LETTER]
    try:
        Receiver().settle(deliveries, outcomes)
    finally:
        queue_consumer.close()
    creates = creates_by_id(exporter)
    for delivery, operation in zip(deliveries, ("ack", "nack", "reject"), strict=True):
        (span,) = finished(exporter, f"{operation} ")
        message_id = delivery.properties["message_id"]
        assert span.attributes["messaging.operation.name"] == operation
        assert span.attributes["messaging.operation.type"] == "settle"
        assert span.attributes["messaging.message.id"] == message_id
        assert "messaging.batch.message_count" not in span.attributes
        assert span.parent.span_id == creates[message_id].get_span_context().span_id
        assert span.context.trace_id == creates[message_id].get_span_context().trace_id
