"""A message's creation context is read from its headers as W3C Trace Context says."""

import pytest
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from inbox_outbox.tracing import _span_context

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": f"00-{TRACE}-{SPAN}-01"},
        {"traceparent": f"00-{TRACE}-{SPAN}-00", "tracestate": "vendor=a,other=b"},
        {"traceparent": f"00-{TRACE}-{SPAN}-03"},
        {"traceparent": f"01-{TRACE}-{SPAN}-01-future"},  # a later version: the propagator's
    ],
)
def test_the_fast_reading_agrees_with_opentelemetrys_propagator(headers):
    expected = trace.get_current_span(
        TraceContextTextMapPropagator().extract(headers)
    ).get_span_context()
    assert _span_context(headers) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"00-{'0' * 32}-{SPAN}-01",  # an all-zero trace id is invalid
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE}-{SPAN}-zz",
        f"00-{TRACE[:-1]}g-{SPAN}-01",
        12,
    ],
)
def test_an_invalid_traceparent_is_no_creation_context(value):
    assert _span_context({"traceparent": value}) is None
