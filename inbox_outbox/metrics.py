"""Metrics: what flowed (counters and durations, recorded where it happens) and what is stuck
(gauges read from the database when a scrape asks), exported through ``prometheus-client``
and OpenTelemetry metrics, each when installed.

The flow's numbers are recorded by the hooks of :mod:`inbox_outbox.tracing` (the same points
that make the spans): nothing else in the apps calls this module but their gauge sources
(``outbox.gauges``, ``inbox.gauges``), registered with :func:`register_gauges` at start-up.

Prometheus names (the OpenTelemetry instruments carry the same names, dotted):

====================================================  =========  ===========================
``inbox_outbox_published_messages_total``             counter    ``topic``
``inbox_outbox_publish_duration_seconds``             histogram  ``topic``
``inbox_outbox_relay_messages_total``                 counter    ``outcome``
``inbox_outbox_relay_batch_duration_seconds``         histogram
``inbox_outbox_consumed_messages_total``              counter    ``consumer``, ``outcome``
``inbox_outbox_handler_duration_seconds``             histogram  ``consumer``
====================================================  =========  ===========================

and the gauges their sources name (see docs/operations.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

try:
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # the optional extra is not installed
    PROMETHEUS = False
else:
    PROMETHEUS = True

try:
    from opentelemetry import metrics as otel_metrics
except ImportError:
    OTEL = False
else:
    OTEL = True

#: Whether anything records metrics: the hooks cost nothing when neither exporter is there.
ENABLED = PROMETHEUS or OTEL

PREFIX = "inbox_outbox"

#: Handler and publish durations span microseconds (an insert) to minutes (a slow handler).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True, slots=True)
class Reading:
    """One gauge value: its name (a key of :data:`GAUGES`), labels and value."""

    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


#: Every gauge a source may report, with its help text (the exporters declare them up front).
GAUGES = {
    "outbox_unsent_messages": "Outbox messages not yet confirmed by the broker (the backlog).",
    "outbox_oldest_unsent_age_seconds": "Age of the oldest unsent outbox message (DB clock).",
    "outbox_dead_messages": "Dead outbox messages (given up on), per topic.",
    "inbox_waiting_keys": "Streams (consumer, source, topic, key) holding waiting messages.",
    "inbox_oldest_waiting_age_seconds": "Age of the oldest waiting inbox message: the oldest gap.",
    "inbox_failed_due_messages": "Failed inbox messages whose retry is due now.",
    "inbox_dead_messages": "Dead inbox messages (out of attempts), per topic.",
}

#: A gauge source: reads the database (cheap, indexed queries) and returns its readings.
GaugeSource = Callable[[], Iterable[Reading]]

_sources: dict[str, GaugeSource] = {}


def register_gauges(name: str, source: GaugeSource) -> None:
    """Have every scrape read ``source``'s gauges (one source per name: registering twice
    replaces it, so an app's ``ready()`` running twice registers it once)."""
    _sources[name] = source


def readings() -> list[Reading]:
    """Every registered source's readings; a source that fails (the database is down) is
    left out and logged, so the counters still reach the scrape."""
    found: list[Reading] = []
    for name, source in list(_sources.items()):
        try:
            found.extend(source())
        except Exception:
            logger.warning("inbox_outbox metrics: gauge source %s failed", name, exc_info=True)
    return found


# -- instruments ----------------------------------------------------------------------------


class _Instruments:
    """The counters and histograms, created once per process in each installed exporter."""

    def __init__(self) -> None:
        self.prom: dict[str, Any] = {}
        self.otel: dict[str, Any] = {}
        if PROMETHEUS:
            p = prometheus_client
            self.prom = {
                "published": p.Counter(
                    f"{PREFIX}_published_messages",
                    "Messages publish() wrote to the outbox.",
                    ["topic"],
                ),
                "publish_seconds": p.Histogram(
                    f"{PREFIX}_publish_duration_seconds",
                    "Time publish() took.",
                    ["topic"],
                    buckets=BUCKETS,
                ),
                "relayed": p.Counter(
                    f"{PREFIX}_relay_messages",
                    "Messages the relay sent, by what the broker did with them.",
                    ["outcome"],
                ),
                "batch_seconds": p.Histogram(
                    f"{PREFIX}_relay_batch_duration_seconds",
                    "Time from a batch's send to the broker's last confirm.",
                    buckets=BUCKETS,
                ),
                "consumed": p.Counter(
                    f"{PREFIX}_consumed_messages",
                    "Handler runs of the inbox, by outcome.",
                    ["consumer", "outcome"],
                ),
                "handler_seconds": p.Histogram(
                    f"{PREFIX}_handler_duration_seconds",
                    "Time a handler run took, its transaction included.",
                    ["consumer"],
                    buckets=BUCKETS,
                ),
            }
            prometheus_client.REGISTRY.register(_GaugeCollector())
        if OTEL:
            meter = otel_metrics.get_meter(PREFIX)
            self.otel = {
                "published": meter.create_counter(f"{PREFIX}.published.messages"),
                "publish_seconds": meter.create_histogram(f"{PREFIX}.publish.duration", unit="s"),
                "relayed": meter.create_counter(f"{PREFIX}.relay.messages"),
                "batch_seconds": meter.create_histogram(f"{PREFIX}.relay.batch.duration", unit="s"),
                "consumed": meter.create_counter(f"{PREFIX}.consumed.messages"),
                "handler_seconds": meter.create_histogram(f"{PREFIX}.handler.duration", unit="s"),
            }
            for name, description in GAUGES.items():
                meter.create_observable_gauge(
                    f"{PREFIX}.{name}", callbacks=[_observer(name)], description=description
                )

    def count(self, name: str, n: float, **labels: str) -> None:
        if n <= 0:
            return
        if self.prom:
            self.prom[name].labels(**labels).inc(n)
        if self.otel:
            self.otel[name].add(n, labels)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        if self.prom:
            metric = self.prom[name]
            (metric.labels(**labels) if labels else metric).observe(seconds)
        if self.otel:
            self.otel[name].record(seconds, labels)


_instruments: _Instruments | None = None


def _get() -> _Instruments:
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


# -- what the hooks record -------------------------------------------------------------------


def published(topic: str, seconds: float) -> None:
    i = _get()
    i.count("published", 1, topic=topic)
    i.observe("publish_seconds", seconds, topic=topic)


def relayed(outcomes: dict[str, int], seconds: float) -> None:
    i = _get()
    for outcome, n in outcomes.items():
        i.count("relayed", n, outcome=outcome)
    i.observe("batch_seconds", seconds)


def consumed(consumer: str, outcome: str, seconds: float | None) -> None:
    i = _get()
    i.count("consumed", 1, consumer=consumer, outcome=outcome)
    if seconds is not None:
        i.observe("handler_seconds", seconds, consumer=consumer)


# -- exporting the gauges --------------------------------------------------------------------

if PROMETHEUS:

    class _GaugeCollector(Collector):
        """Reads the gauge sources at each scrape."""

        def collect(self) -> Iterator[GaugeMetricFamily]:
            families: dict[str, GaugeMetricFamily] = {}
            for reading in readings():
                family = families.get(reading.name)
                if family is None:
                    family = families[reading.name] = GaugeMetricFamily(
                        f"{PREFIX}_{reading.name}",
                        GAUGES.get(reading.name, reading.name),
                        labels=sorted(reading.labels),
                    )
                family.add_metric(
                    [reading.labels[k] for k in sorted(reading.labels)], reading.value
                )
            yield from families.values()

        def describe(self) -> list[GaugeMetricFamily]:
            return []  # read at scrape time only: registering must not query the database


def _observer(name: str) -> Callable[[Any], Iterable[Any]]:
    """The OpenTelemetry callback of one gauge. The reader asks every gauge in turn: the
    sources are read once for all of them (a reading older than a second is read again)."""

    def observe(options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(r.value, r.labels) for r in _recent() if r.name == name]

    return observe


_cache: tuple[float, list[Reading]] = (0.0, [])


def _recent() -> list[Reading]:
    global _cache
    now = time.monotonic()
    if now - _cache[0] > 1.0:
        _cache = (now, readings())
    return _cache[1]


def prometheus_text() -> tuple[bytes, str]:
    """The Prometheus exposition of this process's metrics, and its content type."""
    if not PROMETHEUS:
        raise RuntimeError(
            "prometheus-client is not installed: pip install 'django-inbox-outbox[prometheus]'"
        )
    _get()
    return prometheus_client.generate_latest(), prometheus_client.CONTENT_TYPE_LATEST
