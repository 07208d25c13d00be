"""Reading a broker delivery as a message: CloudEvents structured JSON, or plain JSON
whose AMQP ``message_id`` and ``type`` properties carry id and topic."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .exceptions import InvalidMessage


@dataclass(frozen=True)
class Envelope:
    id: str
    topic: str
    data: Any
    headers: dict[str, Any]
    key: str | None
    sequence: int | None
    source: str
    time: dt.datetime | None
    #: The producer's counter incarnation (``sequenceepoch``); 0 when it sends none.
    epoch: int = 0
    #: On a void announcement, the id of the message whose sequence the producer gave up on.
    voids: str | None = None


def body_id(body: bytes) -> str:
    """A stable id for a delivery that carries none, so its duplicates still dedup."""
    return "sha256:" + hashlib.sha256(body).hexdigest()[:40]


def parse(
    body: bytes | str, properties: dict[str, Any], headers: dict[str, Any] | None, *, max_bytes: int
) -> Envelope:
    """Return the envelope of a delivery, or raise :class:`InvalidMessage` saying why not."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    if len(raw) > max_bytes:
        raise InvalidMessage(f"body of {len(raw)} bytes is over MAX_BODY_BYTES ({max_bytes})")
    try:
        decoded = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from exc
    headers = {str(k): _plain(v) for k, v in (headers or {}).items()}
    if isinstance(decoded, dict) and "specversion" in decoded:
        return _cloudevent(decoded, headers)
    message_id = properties.get("message_id")
    topic = properties.get("type")
    if not message_id or not topic:
        raise InvalidMessage("plain JSON message without the AMQP message_id and type properties")
    return Envelope(
        str(message_id),
        str(topic),
        decoded,
        headers,
        None,
        None,
        str(properties.get("app_id") or ""),
        None,
    )


def _cloudevent(event: dict[str, Any], headers: dict[str, Any]) -> Envelope:
    if event.get("specversion") != "1.0":
        raise InvalidMessage(f"unsupported CloudEvents specversion {event.get('specversion')!r}")
    message_id, topic = event.get("id"), event.get("type")
    if not isinstance(message_id, str) or not message_id:
        raise InvalidMessage("CloudEvent without an id")
    if not isinstance(topic, str) or not topic:
        raise InvalidMessage("CloudEvent without a type (topic)")
    key = event.get("partitionkey")
    sequence = _decimal(event, "sequence")
    epoch = _decimal(event, "sequenceepoch") or 0
    voids = event.get("voids")
    if voids is not None and (not isinstance(voids, str) or key is None or sequence is None):
        raise InvalidMessage("a void announcement needs a string voids, partitionkey and sequence")
    for name in ("traceparent", "tracestate"):
        if name in event:
            headers.setdefault(name, event[name])
    time = None
    if isinstance(event.get("time"), str):
        try:
            time = dt.datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        except ValueError:
            time = None
    return Envelope(
        message_id,
        topic,
        event.get("data"),
        headers,
        str(key) if key is not None else None,
        sequence,
        str(event.get("source") or ""),
        time,
        epoch,
        voids,
    )


def _decimal(event: dict[str, Any], name: str) -> int | None:
    value = event.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"{name} {value!r} is not a decimal integer") from exc


def _plain(value: Any) -> Any:
    """AMQP header values as JSON-storable values."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value
