"""Traces, after OpenTelemetry's messaging conventions: the only module that calls OpenTelemetry.

Three kinds of span tell a message's story across services:

- ``create <topic>`` (PRODUCER), started by ``publish()`` in the caller's current trace. Its
  context is stored in the message as W3C ``traceparent``/``tracestate`` headers, which travel
  as the CloudEvents extensions of the same names (``inbox_outbox.cloudevents``).
- ``send <exchange>`` (CLIENT: the create spans are the messages' creation contexts), one per
  relay batch, from the send to the broker's last confirm, linked to each message's creation
  context, with the batch size and what the broker did with it.
- ``process <topic>`` (CONSUMER), one per handler run in the inbox: a child of the message's
  creation context when the message is handled alone, linked to it (and a child of the batch's
  own ``process`` span) when it is handled in a batch; the handler's own spans nest inside.
- ``ack <queue>``, ``nack <queue>``, ``reject <queue>`` (CLIENT, operation type ``settle``),
  one per settlement the inbox sends the broker once a batch is durable: a child of the
  message's creation context when it settles one message, linked to each message's creation
  context when it settles several (one ``basic.ack`` often covers a whole batch).

The apps only decorate their functions with the hooks here. Without ``opentelemetry-api``
installed every hook returns the function it was given, unchanged: nothing of OpenTelemetry is
imported and nothing is added to any call. With the API but no SDK configured, the spans are
OpenTelemetry's no-op spans and no context is stored.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar, cast

from . import metrics
from .conf import get_settings

try:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        StatusCode,
        TraceFlags,
        TraceState,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the optional extra is not installed: every hook is the identity
    ENABLED = False
else:
    ENABLED = True
    _PROPAGATOR = TraceContextTextMapPropagator()

#: Whether the hooks do anything: they trace when OpenTelemetry is installed, and record
#: metrics when an exporter of them is; with neither, every hook is the identity.
HOOKED = ENABLED or metrics.ENABLED

#: The instrumentation scope of every span (OpenTelemetry's tracer name).
SCOPE = "inbox_outbox"
#: What ``messaging.system`` says: the broker the relay and the inbox speak to.
SYSTEM = "rabbitmq"
#: The headers that carry a message's creation context (W3C Trace Context).
CONTEXT_HEADERS = ("traceparent", "tracestate")

F = TypeVar("F", bound=Callable[..., Any])


def _tracer() -> Any:
    # Looked up per use: a provider configured after import (the SDK, in tests) is honoured.
    return trace.get_tracer(SCOPE)


#: A version-00 ``traceparent``: trace id, span id, flags (lower-case hex, as W3C requires).
_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")


def _span_context(headers: Mapping[str, Any] | None) -> SpanContext | None:
    """The creation context a message carries in its headers, if it has a valid one.

    A version-00 ``traceparent`` (all there is today) is read directly, ten times faster than
    the propagator's extraction: the relay reads one per message of every batch. Other
    versions go through the propagator, which knows their rules.
    """
    if not headers:
        return None
    value = headers.get("traceparent")
    if not isinstance(value, str):
        return None
    state = headers.get("tracestate")
    match = _VERSION_00.match(value)
    if match is not None:
        trace_id, span_id = int(match[1], 16), int(match[2], 16)
        if not trace_id or not span_id:
            return None
        return SpanContext(
            trace_id,
            span_id,
            is_remote=True,
            trace_flags=TraceFlags(int(match[3], 16)),
            trace_state=TraceState.from_header([state]) if isinstance(state, str) else None,
        )
    if value.startswith("00-"):  # version 00 of another shape: invalid
        return None
    carrier = {"traceparent": value}
    if isinstance(state, str):
        carrier["tracestate"] = state
    context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return context if context.is_valid else None


def _creation_context(headers: Mapping[str, Any] | None) -> Context | None:
    """The creation context of a message as a parent for its spans, if it has one."""
    span_context = _span_context(headers)
    if span_context is None:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def _link(headers: Mapping[str, Any] | None, message_id: Any) -> Link | None:
    span_context = _span_context(headers)
    if span_context is None:
        return None
    return Link(span_context, {"messaging.message.id": str(message_id)})


class _NoSpan:
    """Stands for a span when only metrics are recorded."""

    def set_attribute(self, key: str, value: Any) -> None: ...
    def set_attributes(self, attributes: Any) -> None: ...
    def record_exception(self, exc: BaseException) -> None: ...
    def set_status(self, *args: Any) -> None: ...
    def end(self) -> None: ...


_NO_SPAN = _NoSpan()

#: Links a ``send`` span gets at most: the SDK's default limit, which would drop the rest.
MAX_LINKS = 128


def _base(operation: str, topic: str | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": get_settings().exchange,
    }
    if topic is not None:
        attributes["messaging.rabbitmq.destination.routing_key"] = topic
    return attributes


# -- publish() ----------------------------------------------------------------------------


def creates(publish: F) -> F:
    """Decorate ``publish(topic, payload, *, headers=..., ...)``: a ``create`` span around it,
    whose context the message stores in its headers (unless the caller gave a traceparent)."""
    if not HOOKED:
        return publish

    @functools.wraps(publish)
    def traced(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        topic = str(args[0] if args else kwargs.get("topic"))
        if not ENABLED:
            message = publish(*args, **kwargs)
            metrics.published(topic, time.perf_counter() - started)
            return message
        attributes = _base("create", topic)
        if kwargs.get("key") is not None:
            attributes["inbox_outbox.key"] = str(kwargs["key"])
        with _tracer().start_as_current_span(
            f"create {topic}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            if span.get_span_context().is_valid:
                headers = kwargs.get("headers") or {}
                if isinstance(headers, dict) and "traceparent" not in headers:
                    carrier: dict[str, str] = {}
                    _PROPAGATOR.inject(carrier)
                    kwargs["headers"] = {**headers, **carrier}
            message = publish(*args, **kwargs)
            span.set_attribute("messaging.message.id", str(message.id))
        if metrics.ENABLED:
            metrics.published(topic, time.perf_counter() - started)
        return message

    return cast(F, traced)


# -- the relay ----------------------------------------------------------------------------


class Batch(Protocol):
    """What the relay's publisher reports of a batch (``outbox.publisher.BatchResult``)."""

    sent: set[Any]
    unroutable: set[Any]
    failed: dict[Any, str]
    refused: set[Any]


class BatchPublisher(Protocol):
    """The relay's publisher (``outbox.publisher.Publisher``) as the send span sees it."""

    def send(self, batch: Any) -> None: ...
    def collect(self) -> Any: ...
    def close(self) -> None: ...


P = TypeVar("P", bound=BatchPublisher)


def observed(publisher: P) -> P:
    """``publisher``, recording a ``send`` span per batch from ``send`` to ``collect``."""
    if not HOOKED:
        return publisher
    return cast(P, _SendSpans(publisher))


class _SendSpans:
    """A publisher that wraps another and traces each of its batches."""

    def __init__(self, inner: BatchPublisher) -> None:
        self._inner = inner
        self._span: Any = None
        self._started = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def send(self, batch: Any) -> None:
        self._end(None, None)  # a batch never collected (the relay gave up on it)
        self._started = time.perf_counter()
        if ENABLED:
            links = []
            for message in batch:
                if (link := _link(message.headers, message.id)) is not None:
                    links.append(link)
                    if len(links) == MAX_LINKS:
                        break
            attributes = _base("send")
            attributes["messaging.batch.message_count"] = len(batch)
            exchange = attributes["messaging.destination.name"]
            self._span = _tracer().start_span(
                f"send {exchange}", kind=SpanKind.CLIENT, attributes=attributes, links=links
            )
        else:
            self._span = _NO_SPAN
        try:
            self._inner.send(batch)
        except BaseException as exc:
            self._end(None, exc)
            raise

    def collect(self) -> Any:
        try:
            result = self._inner.collect()
        except BaseException as exc:
            self._end(None, exc)
            raise
        self._end(result, None)
        return result

    def publish(self, batch: Any) -> Any:
        self.send(batch)
        return self.collect()

    def close(self) -> None:
        self._inner.close()

    def _end(self, result: Batch | None, error: BaseException | None) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        if result is not None:
            outcomes = {
                "confirmed": len(result.sent),
                "returned": len(result.unroutable),
                "nacked": len(result.refused),
                "failed": len(result.failed),
            }
            span.set_attributes({f"inbox_outbox.{k}": v for k, v in outcomes.items()})
            if metrics.ENABLED:
                metrics.relayed(outcomes, time.perf_counter() - self._started)
        if error is not None:
            span.record_exception(error)
            span.set_attribute("error.type", _error_type(error))
            span.set_status(StatusCode.ERROR, str(error)[:200])
        span.end()


# -- the inbox ----------------------------------------------------------------------------

#: Set while :func:`handles` traces a message handled alone, so that the function it calls
#: for the work (:func:`handles_in_batch`'s) adds no second span.
_alone: contextvars.ContextVar[bool] = contextvars.ContextVar("inbox_outbox_alone", default=False)

#: Outcomes of a handler run that are errors.
_ERRORS = {"failed", "dead", "rejected"}


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@contextmanager
def _processing(
    *,
    consumer: str,
    message_id: Any,
    topic: str,
    headers: Mapping[str, Any] | None,
    attempt: int | None,
    linked: bool = False,
) -> Iterator[Any]:
    """A ``process`` span, current while the body runs: the handler's spans nest in it."""
    if not ENABLED:
        yield _NO_SPAN
        return
    attributes = _base("process", topic)
    attributes["messaging.consumer.group.name"] = consumer
    attributes["messaging.message.id"] = str(message_id)
    if attempt is not None:
        attributes["inbox_outbox.attempt"] = attempt
    parent = None if linked else _creation_context(headers)
    links: Iterable[Link] = ()
    if linked and (link := _link(headers, message_id)) is not None:
        links = [link]
    with _tracer().start_as_current_span(
        f"process {topic}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
    ) as span:
        yield span


def _settled(span: Any, consumer: str, outcome: Any, started: float | None) -> Any:
    """Record ``outcome`` of a handler run on its span and in the metrics."""
    value = str(getattr(outcome, "value", outcome))
    span.set_attribute("inbox_outbox.outcome", value)
    if value in _ERRORS:
        if ENABLED:
            span.set_status(StatusCode.ERROR)
        if value == "rejected":
            span.set_attribute("error.type", "rejected")
    if metrics.ENABLED:
        seconds = None if started is None else time.perf_counter() - started
        metrics.consumed(consumer, value, seconds)
    return outcome


def handles(handle: F) -> F:
    """Decorate ``handle(handler, envelope, ...)``, which handles one message alone: a
    ``process`` span parented on the message's creation context."""
    if not HOOKED:
        return handle

    @functools.wraps(handle)
    def traced(handler: Any, env: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        with _processing(
            consumer=handler.consumer,
            message_id=env.id,
            topic=env.topic,
            headers=env.headers,
            attempt=1,
        ) as span:
            token = _alone.set(True)
            try:
                outcome = handle(handler, env, *args, **kwargs)
            finally:
                _alone.reset(token)
            return _settled(span, handler.consumer, outcome, started)

    return cast(F, traced)


def handles_in_batch(handle: F) -> F:
    """Decorate ``_handle_in_transaction(alias, handler, envelope, raw, planned)``: called by
    a batch, a ``process`` span linked to the message's creation context, inside the batch's
    span.
    (Called by :func:`handles`'s function, it adds nothing: that span is the run's.)"""
    if not HOOKED:
        return handle

    @functools.wraps(handle)
    def traced(alias: Any, handler: Any, env: Any, *args: Any) -> Any:
        if _alone.get():
            return handle(alias, handler, env, *args)
        started = time.perf_counter()
        with _processing(
            consumer=handler.consumer,
            message_id=env.id,
            topic=env.topic,
            headers=env.headers,
            attempt=1,
            linked=True,
        ) as span:
            try:
                outcome = handle(alias, handler, env, *args)
            except Exception as exc:  # the batch rolls back; each message is handled alone
                span.set_attribute("error.type", _error_type(exc))
                raise
            return _settled(span, handler.consumer, outcome, started)

    return cast(F, traced)


def handles_batch(process_batch: F) -> F:
    """Decorate ``process_batch(deliveries, ...)``: one ``process`` span for the batch."""
    if not ENABLED:
        return process_batch

    @functools.wraps(process_batch)
    def traced(deliveries: Any, *args: Any, **kwargs: Any) -> Any:
        conf = get_settings()
        attributes = _base("process")
        attributes["messaging.consumer.group.name"] = conf.service
        attributes["messaging.batch.message_count"] = len(deliveries)
        with _tracer().start_as_current_span(
            f"process {conf.queue_name}", kind=SpanKind.CONSUMER, attributes=attributes
        ):
            return process_batch(deliveries, *args, **kwargs)

    return cast(F, traced)


def handles_stored(run_stored: F) -> F:
    """Decorate ``_run_stored(alias, handler, row)``, which runs a stored (waiting or failed)
    row: a ``process`` span parented on the creation context the row kept."""
    if not HOOKED:
        return run_stored

    @functools.wraps(run_stored)
    def traced(alias: Any, handler: Any, row: Any) -> Any:
        started = time.perf_counter()
        with _processing(
            consumer=handler.consumer,
            message_id=row.message_id,
            topic=row.topic,
            headers=row.headers,
            attempt=row.attempts + 1,
        ) as span:
            outcome = run_stored(alias, handler, row)
            return _settled(span, handler.consumer, outcome, started)

    return cast(F, traced)


def rejects(reject: F) -> F:
    """Decorate ``_reject(alias, delivery, reason, envelope=None)``: a ``process`` span with
    outcome ``rejected``, parented on whatever creation context the delivery carries."""
    if not HOOKED:
        return reject

    @functools.wraps(reject)
    def traced(alias: Any, delivery: Any, reason: str, envelope: Any = None) -> Any:
        conf = get_settings()
        headers = envelope.headers if envelope is not None else delivery[2]
        topic = envelope.topic if envelope is not None else conf.queue_name
        message_id = envelope.id if envelope is not None else delivery[1].get("message_id", "")
        with _processing(
            consumer=conf.service,
            message_id=message_id,
            topic=topic,
            headers=headers if isinstance(headers, Mapping) else None,
            attempt=None,
        ) as span:
            result = reject(alias, delivery, reason, envelope)
            _settled(span, conf.service, "rejected", None)
            return result

    return cast(F, traced)


def _delivery_context(message: Any) -> SpanContext | None:
    """The creation context a broker delivery carries: in its AMQP headers (where the relay
    puts it), else in its CloudEvent body's ``traceparent`` extension."""
    headers = getattr(message, "headers", None)
    if isinstance(headers, Mapping) and "traceparent" in headers:
        return _span_context(headers)
    body = getattr(message, "body", None)
    if not body or b"traceparent" not in (body if isinstance(body, bytes) else body.encode()):
        return None
    try:
        event = json.loads(body)
    except ValueError:  # not JSON (it was stored rejected): no context
        return None
    return _span_context(event) if isinstance(event, dict) else None


def _message_id(message: Any) -> str:
    properties = getattr(message, "properties", None) or {}
    return str(properties.get("message_id", ""))


def settles(operation: str) -> Callable[[F], F]:
    """Decorate ``settle(messages, ...)``, which settles broker deliveries by ``operation``
    (``ack``, ``nack`` or ``reject``): a ``settle`` span around it, a child of the creation
    context of a single message, linked to each one's in a batch."""

    def decorate(settle: F) -> F:
        if not ENABLED:
            return settle

        @functools.wraps(settle)
        def traced(messages: Any, *args: Any, **kwargs: Any) -> Any:
            if not messages:
                return settle(messages, *args, **kwargs)
            conf = get_settings()
            attributes = _base("settle")
            attributes["messaging.operation.name"] = operation
            attributes["messaging.consumer.group.name"] = conf.service
            parent = None
            links = []
            if len(messages) == 1:
                attributes["messaging.message.id"] = _message_id(messages[0])
                if (context := _delivery_context(messages[0])) is not None:
                    parent = trace.set_span_in_context(NonRecordingSpan(context))
            else:
                attributes["messaging.batch.message_count"] = len(messages)
                for message in messages:
                    if (context := _delivery_context(message)) is not None:
                        links.append(Link(context, {"messaging.message.id": _message_id(message)}))
                        if len(links) == MAX_LINKS:
                            break
            span = _tracer().start_span(
                f"{operation} {conf.queue_name}",
                context=parent,
                kind=SpanKind.CLIENT,
                attributes=attributes,
                links=links,
            )
            try:
                return settle(messages, *args, **kwargs)
            except BaseException as exc:
                span.record_exception(exc)
                span.set_attribute("error.type", _error_type(exc))
                span.set_status(StatusCode.ERROR, str(exc)[:200])
                raise
            finally:
                span.end()

        return cast(F, traced)

    return decorate


def fails(failure: F) -> F:
    """Decorate ``_failure(handler, exc, attempt)``, which decides what a handler's exception
    makes of its message: the current ``process`` span records the exception."""
    if not ENABLED:
        return failure

    @functools.wraps(failure)
    def traced(handler: Any, exc: BaseException, attempt: int) -> Any:
        span = trace.get_current_span()
        span.record_exception(exc)
        span.set_attribute("error.type", _error_type(exc))
        return failure(handler, exc, attempt)

    return cast(F, traced)
