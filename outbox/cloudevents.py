"""The wire format: CloudEvents 1.0, structured JSON mode, over AMQP 0-9-1.

Encoding splices the payload's stored JSON text into the envelope instead of
decoding and re-encoding it; that keeps the relay's per-message cost low and the
bytes of ``data`` exactly what ``publish()`` validated.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

CONTENT_TYPE = "application/cloudevents+json"
SPECVERSION = "1.0"
#: Header names that travel as CloudEvents extension attributes as well as AMQP headers.
EXTENSION_HEADERS = ("traceparent", "tracestate")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One claimed outbox row, ready to be put on the wire."""

    id: uuid.UUID
    topic: str
    key: str | None
    sequence: int | None
    payload_json: str
    headers: dict[str, Any]
    created_at: dt.datetime
    expires_at: dt.datetime | None


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def encode(message: Outgoing, *, source: str) -> bytes:
    """Return the structured-mode CloudEvents body for ``message``."""
    envelope: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": str(message.id),
        "source": source,
        "type": message.topic,
        "time": rfc3339(message.created_at),
        "datacontenttype": "application/json",
    }
    if message.key is not None:
        envelope["partitionkey"] = message.key
    if message.sequence is not None:
        envelope["sequence"] = str(message.sequence)
    for name in EXTENSION_HEADERS:
        if name in message.headers:
            envelope[name] = str(message.headers[name])
    head = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    return f'{head[:-1]},"data":{message.payload_json}}}'.encode()


def amqp_properties(message: Outgoing, *, now: dt.datetime) -> dict[str, Any]:
    """AMQP basic properties for ``message`` (persistent; ``expiration`` when it has a TTL)."""
    props: dict[str, Any] = {
        "content_type": CONTENT_TYPE,
        "delivery_mode": 2,
        "message_id": str(message.id),
        "type": message.topic,
        "timestamp": int(message.created_at.timestamp()),
    }
    if message.headers:
        props["application_headers"] = {str(k): v for k, v in message.headers.items()}
    if message.expires_at is not None:
        remaining_ms = max(1, int((message.expires_at - now).total_seconds() * 1000))
        props["expiration"] = str(remaining_ms)
    return props
