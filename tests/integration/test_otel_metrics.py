"""The same metrics through OpenTelemetry: counters, histograms and the database's gauges."""

import pytest
from django.db import transaction
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.util._once import Once

from inbox.testing import deliver_outbox
from inbox_outbox import metrics
from outbox import publish

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def reader():
    reader = InMemoryMetricReader()
    otel_metrics._internal._METER_PROVIDER_SET_ONCE = Once()
    otel_metrics._internal._METER_PROVIDER = None
    otel_metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    metrics._get()  # instruments made before the provider delegate to it once it is set
    yield reader
    otel_metrics._internal._METER_PROVIDER_SET_ONCE = Once()
    otel_metrics._internal._METER_PROVIDER = None


def points(reader):
    found = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = [(dict(p.attributes), p) for p in metric.data.data_points]
    return found


def test_publish_relay_and_handling_are_counted_and_the_gauges_observed(reader):
    with transaction.atomic():
        publish("test.effect", {"n": 1})
        publish("test.effect", {"n": 2})
    before = points(reader)
    assert [p.value for _, p in before["inbox_outbox.outbox_unsent_messages"]] == [2]
    deliver_outbox()
    metrics._cache = (0.0, [])  # readings are reused for a second, across the gauges
    found = points(reader)
    (published,) = [
        p for a, p in found["inbox_outbox.published.messages"] if a["topic"] == "test.effect"
    ]
    assert published.value >= 2
    confirmed = [
        p.value for a, p in found["inbox_outbox.relay.messages"] if a["outcome"] == "confirmed"
    ]
    assert confirmed and confirmed[0] >= 2
    done = [p.value for a, p in found["inbox_outbox.consumed.messages"] if a["outcome"] == "done"]
    assert sum(done) >= 4  # two messages, two consumers of the topic
    assert found["inbox_outbox.handler.duration"][0][1].count >= 1
    assert [p.value for _, p in found["inbox_outbox.outbox_unsent_messages"]] == [0]
