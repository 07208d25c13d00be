"""One trace across processes: the request publishing in this process, a real relay process
and a real Celery worker, each recording its spans with OpenTelemetry's SDK into a file."""

import pytest
from django.db import transaction
from opentelemetry import trace

from outbox import publish
from tests import spans
from tests.conftest import wait_until
from tests.integration.test_workers import start_workers
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def exporter():
    exporter = spans.in_memory()
    yield exporter
    spans.uninstall()


def test_one_trace_runs_from_the_request_through_create_send_and_process_to_the_handler(
    processes, broker_url, names, tmp_path, exporter
):
    relay_spans, worker_spans = tmp_path / "relay.spans", tmp_path / "worker.spans"
    start_workers(processes, broker_url, names, TEST_SPANS_FILE=str(worker_spans))
    processes.relay(TEST_SPANS_FILE=str(relay_spans))

    tracer = trace.get_tracer("tests.http")
    with tracer.start_as_current_span("POST /orders") as request, transaction.atomic():
        message = publish("test.traced", {"order": 1})
    wait_until(
        lambda: Effect.objects.filter(consumer="traced", message_id=str(message.id)).exists(),
        timeout=60,
        message="the handler's effect",
    )

    def process_and_work():
        found = spans.read(worker_spans)
        names_found = {s.name for s in found}
        wanted = {"process test.traced", "handler work", f"ack {names.queue}"}
        return found if wanted <= names_found else None

    worker = wait_until(process_and_work, timeout=10, message="the worker's spans")
    sent = wait_until(lambda: spans.read(relay_spans), timeout=10, message="the relay's spans")

    (create,) = [s for s in exporter.get_finished_spans() if s.name == "create test.traced"]
    trace_id = f"{create.get_span_context().trace_id:032x}"
    create_id = f"{create.get_span_context().span_id:016x}"
    assert create.parent.span_id == request.get_span_context().span_id

    (send,) = [s for s in sent if create_id in {link["span_id"] for link in s.links}]
    assert send.name == f"send {names.exchange}" and send.kind == "CLIENT"
    assert send.attributes["messaging.system"] == "rabbitmq"
    assert send.attributes["inbox_outbox.confirmed"] >= 1
    assert send.process != worker[0].process

    (process,) = [s for s in worker if s.name == "process test.traced"]
    assert process.kind == "CONSUMER"
    assert process.attributes["messaging.message.id"] == str(message.id)
    assert process.attributes["inbox_outbox.outcome"] == "done"
    # Handled alone, it is a child of its creation context (in a batch it would be linked).
    assert process.trace_id == trace_id and process.parent_id == create_id
    (work,) = [s for s in worker if s.name == "handler work"]
    assert work.parent_id == process.span_id and work.trace_id == process.trace_id
    # The worker acknowledged it after the commit, in the same trace.
    (ack,) = [s for s in worker if s.name == f"ack {names.queue}"]
    assert ack.attributes["messaging.operation.type"] == "settle"
    assert ack.attributes["messaging.message.id"] == str(message.id)
    assert ack.trace_id == trace_id and ack.parent_id == create_id
