"""The wire format: CloudEvents 1.0, structured JSON mode, over AMQP 0-9-1.

Encoding splices the payload's stored JSON text into the envelope instead of
decoding and re-encoding it; that keeps the relay's per-message cost low and the
bytes of ``data`` exactly what ``publish()`` validated.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

CONTENT_TYPE = "application/cloudevents+json"
SPECVERSION = "1.0"
#: Header names that travel as CloudEvents extension attributes as well as AMQP headers.
EXTENSION_HEADERS = ("traceparent", "tracestate")


class Event(Protocol):
    """What :func:`encode` reads: an :class:`Outgoing` row, or a test's event whose id, like
    any CloudEvents id, need not be a UUID."""

    @property
    def id(self) -> uuid.UUID | str: ...
    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    @property
    def sequence(self) -> int | None: ...
    @property
    def epoch(self) -> int | None: ...
    @property
    def voids(self) -> uuid.UUID | None: ...
    @property
    def payload_json(self) -> str: ...
    @property
    def headers(self) -> dict[str, Any]: ...
    @property
    def created_at(self) -> dt.datetime: ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One claimed outbox row, ready to be put on the wire (an :class:`Event`)."""

    id: uuid.UUID
    topic: str
    key: str | None
    sequence: int | None
    epoch: int | None
    voids: uuid.UUID | None
    payload_json: str
    headers: dict[str, Any]
    created_at: dt.datetime
    expires_at: dt.datetime | None


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


#: A str as a JSON string literal, with the same escaping as the rest of the envelope.
_quote = json.JSONEncoder(ensure_ascii=False).encode


@functools.lru_cache(maxsize=1024)
def _middle(source: str, topic: str) -> str:
    """The envelope between the id and the time, the same for every message of a topic."""
    return f'","source":{_quote(source)},"type":{_quote(topic)},"time":"'


def encode(message: Event, *, source: str) -> bytes:
    """Return the structured-mode CloudEvents body for ``message``.

    Assembled from pieces rather than by ``json.dumps`` of a dict: the relay calls this for
    every message, and only the id, time, key, sequence and trace headers vary.
    """
    parts = [
        '{"specversion":"',
        SPECVERSION,
        '","id":"',
        str(message.id),
        _middle(source, message.topic),
        rfc3339(message.created_at),
        '","datacontenttype":"application/json"',
    ]
    if message.key is not None:
        parts += (',"partitionkey":', _quote(message.key))
    if message.sequence is not None:
        parts += (',"sequence":"', str(message.sequence), '"')
    if message.epoch:
        parts += (',"sequenceepoch":"', str(message.epoch), '"')
    if message.voids is not None:
        parts += (',"voids":"', str(message.voids), '"')
    if message.headers:
        for name in EXTENSION_HEADERS:
            if name in message.headers:
                parts += (',"', name, '":', _quote(str(message.headers[name])))
    parts += (',"data":', message.payload_json, "}")
    return "".join(parts).encode()


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
