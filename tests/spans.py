"""OpenTelemetry's SDK for the tests: spans kept in memory (this process) or written to a file
(a relay or worker subprocess), and read back as plain records."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

#: The environment variable that makes a subprocess of the tests write its spans to a file.
FILE_VARIABLE = "TEST_SPANS_FILE"


@dataclass(frozen=True)
class Record:
    """A finished span as the tests compare them: ids in hex, kind by name."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    links: list[dict]
    attributes: dict
    status: str
    process: int

    @classmethod
    def of(cls, span: ReadableSpan) -> Record:
        context = span.get_span_context()
        return cls(
            name=span.name,
            kind=span.kind.name,
            trace_id=f"{context.trace_id:032x}",
            span_id=f"{context.span_id:016x}",
            parent_id=f"{span.parent.span_id:016x}" if span.parent else None,
            links=[
                {
                    "trace_id": f"{link.context.trace_id:032x}",
                    "span_id": f"{link.context.span_id:016x}",
                    "attributes": dict(link.attributes or {}),
                }
                for link in span.links
            ],
            attributes=dict(span.attributes or {}),
            status=span.status.status_code.name,
            process=os.getpid(),
        )


class FileExporter(SpanExporter):
    """Appends each finished span to a file, one JSON object a line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(Record.of(s).__dict__) + "\n" for s in spans)
        with self.lock, open(self.path, "a") as f:
            f.write(lines)
        return SpanExportResult.SUCCESS


def read(path: Path) -> list[Record]:
    if not path.exists():
        return []
    return [Record(**json.loads(line)) for line in path.read_text().splitlines() if line]


def install(provider: TracerProvider) -> None:
    """Make ``provider`` the global one (OpenTelemetry lets a process set it once: the tests
    reset that, as OpenTelemetry's own test helpers do)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace.set_tracer_provider(provider)


def uninstall() -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


def to_file(path: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(path)))
    install(provider)


def in_memory() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install(provider)
    return exporter
