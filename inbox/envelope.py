"""Reading a broker delivery as a message: CloudEvents structured JSON, or plain JSON
whose AMQP ``message_id`` and ``type`` properties carry id and topic.

This is the inbox's boundary: every value that reaches a column is checked here against the
shared limits (:mod:`inbox_outbox.limits`), so a delivery either becomes an
:class:`Envelope` the database can store as it is, or raises :class:`InvalidMessage` saying
what is wrong with it. Nothing is truncated: a long id is refused, never cut into another
message's id.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from inbox_outbox.limits import (
    JSON_DEPTH,
    LimitError,
    check_bigint,
    check_id,
    check_text,
    json_text,
    json_value,
    printable,
    storable_text,
)

from .exceptions import InvalidMessage

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Order:
    """Where a keyed message stands: its ordering key and its producer's (epoch, sequence)."""

    key: str
    sequence: int
    #: The producer's counter incarnation (``sequenceepoch``); 0 when it sends none.
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Envelope:
    """A delivery read and checked: every field fits its column as it is."""

    id: str
    topic: str
    data: Any
    #: ``data`` as strict JSON text, what the inbox row stores.
    payload_json: str
    headers: dict[str, Any]
    headers_json: str
    source: str = ""
    time: dt.datetime | None = None
    #: The ordering key when the message has one (with or without a position).
    key: str | None = None
    #: Key and position of a message that takes part in per-key order.
    order: Order | None = None
    #: On a void announcement, the id of the message whose sequence the producer gave up on.
    voids: str | None = None
    #: How often the broker had delivered it before (see :func:`broker_delivery_count`).
    delivery_count: int | None = None

    @property
    def sequence(self) -> int | None:
        return self.order.sequence if self.order is not None else None

    @property
    def epoch(self) -> int:
        return self.order.epoch if self.order is not None else 0


#: A sequence as the wire carries it: a decimal string (or, leniently, a JSON integer).
_DECIMAL = re.compile(r"-?[0-9]{1,19}")


def broker_delivery_count(headers: dict[str, Any] | None) -> int | None:
    """The broker's count of this message's earlier deliveries, None where it keeps none.

    A quorum queue sets ``x-delivery-count`` on each delivery (RabbitMQ 3.x: every return,
    nacks and closed channels included; 4.x: failed deliveries only) and, from 4.0,
    ``x-acquired-count`` (every time a consumer took it). The latter, where present, is the
    truer count of how often the message was handed out. A classic queue sets neither, and
    RabbitMQ 3.10 sets no ``x-delivery-count`` on a first delivery to a consumer.
    """
    for name in ("x-acquired-count", "x-delivery-count"):
        value = (headers or {}).get(name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
            return value
    return None


def parse(
    body: bytes | str, properties: dict[str, Any], headers: dict[str, Any] | None, *, max_bytes: int
) -> Envelope:
    """Return the envelope of a delivery, or raise :class:`InvalidMessage` saying why not."""
    envelope = _parse(body, properties, headers, max_bytes=max_bytes)
    count = broker_delivery_count(headers)
    return envelope if count is None else dataclasses.replace(envelope, delivery_count=count)


def _parse(
    body: bytes | str, properties: dict[str, Any], headers: dict[str, Any] | None, *, max_bytes: int
) -> Envelope:
    raw = raw_bytes(body)
    if len(raw) > max_bytes:
        raise InvalidMessage(f"body of {len(raw)} bytes is over MAX_BODY_BYTES ({max_bytes})")
    try:
        decoded = json_value(raw)
    except LimitError as exc:
        raise InvalidMessage(f"body {exc}") from exc
    plain = _headers(headers)
    if isinstance(decoded, dict) and "specversion" in decoded:
        return _cloudevent(decoded, plain)
    message_id = properties.get("message_id")
    topic = properties.get("type")
    if not message_id or not topic:
        raise InvalidMessage("plain JSON message without the AMQP message_id and type properties")
    return _checked(
        id=_field(check_id, message_id, "the AMQP message_id property"),
        topic=_field(check_text, topic, "the AMQP type property"),
        data=decoded,
        headers=plain,
        source=_optional_text(properties.get("app_id"), "the AMQP app_id property"),
    )


def _cloudevent(event: dict[str, Any], headers: dict[str, Any]) -> Envelope:
    if event.get("specversion") != "1.0":
        raise InvalidMessage(
            f"unsupported CloudEvents specversion {printable(event.get('specversion'), 60)}"
        )
    message_id, topic = event.get("id"), event.get("type")
    if message_id is None or message_id == "":
        raise InvalidMessage("CloudEvent without an id")
    if topic is None or topic == "":
        raise InvalidMessage("CloudEvent without a type (topic)")
    key = event.get("partitionkey")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)  # a number sent as a key: the same key as its decimal string
    key = None if key is None else _field(check_text, key, "partitionkey")
    sequence = _decimal(event, "sequence")
    epoch = _decimal(event, "sequenceepoch") or 0
    voids = event.get("voids")
    if voids is not None:
        if key is None or sequence is None:
            raise InvalidMessage("a void announcement needs voids, partitionkey and sequence")
        voids = _field(check_id, voids, "voids")
    for name in ("traceparent", "tracestate"):
        if name in event:
            headers.setdefault(name, _header_value(event[name], name, 1))
    return _checked(
        id=_field(check_id, message_id, "id"),
        topic=_field(check_text, topic, "type (topic)"),
        data=event.get("data"),
        headers=headers,
        source=_optional_text(event.get("source"), "source"),
        time=_time(event.get("time")),
        key=key,
        order=Order(key, sequence, epoch) if key is not None and sequence is not None else None,
        voids=voids,
    )


def _checked(*, data: Any, headers: dict[str, Any], **fields: Any) -> Envelope:
    """The envelope, with its data and headers encoded as the strict JSON the row stores."""
    payload_json = _field(json_text, data, "data")
    headers_json = _field(json_text, headers, "headers")
    return Envelope(
        data=data, payload_json=payload_json, headers=headers, headers_json=headers_json, **fields
    )


def _field(check: Callable[[Any], T], value: Any, what: str) -> T:
    """``check(value)``, its :class:`LimitError` told as an :class:`InvalidMessage` about
    ``what``."""
    try:
        return check(value)
    except LimitError as exc:
        raise InvalidMessage(f"{what} {printable(value, 80)} {exc}") from exc


def _optional_text(value: Any, what: str) -> str:
    return "" if value is None or value == "" else _field(check_text, value, what)


def _decimal(event: dict[str, Any], name: str) -> int | None:
    """A sequence or epoch: a decimal string (or a JSON integer) within the 64-bit range."""
    value = event.get(name)
    if value is None:
        return None
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise InvalidMessage(f"{name} {printable(value, 80)} is not a decimal integer")
    return _field(check_bigint, number, name)


def _time(value: Any) -> dt.datetime | None:
    """The CloudEvents ``time``, when it is a readable RFC 3339 timestamp (it is informative:
    an unreadable one is dropped, not a reason to refuse the message)."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def raw_bytes(body: bytes | str) -> bytes:
    """A delivery's body as bytes, whatever it was handed as (a str with lone surrogates
    keeps them, as bytes that are not UTF-8, so it is refused and stored, never lost)."""
    return body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)


def _headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """AMQP headers as JSON values: byte strings decoded as UTF-8, timestamps and decimals as
    strings. Checked for storing by :func:`_checked`."""
    return {_header_name(k): _header_value(v, str(k), 1) for k, v in (headers or {}).items()}


def _header_value(value: Any, name: str, depth: int) -> Any:
    if depth > JSON_DEPTH:
        raise InvalidMessage(f"header {printable(name, 80)} is nested deeper than {JSON_DEPTH}")
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            raise InvalidMessage(
                f"header {printable(name, 80)} holds bytes that are not UTF-8 text"
            ) from None
    if isinstance(value, dict):
        return {
            _header_name(k): _header_value(v, f"{name}.{k}", depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_header_value(v, name, depth + 1) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if value is None or isinstance(value, str | int | float):
        return value
    raise InvalidMessage(f"header {printable(name, 80)} holds a {type(value).__name__}")


def _header_name(name: Any) -> str:
    if isinstance(name, bytes):
        try:
            return name.decode()
        except UnicodeDecodeError:
            raise InvalidMessage(f"header name {printable(name, 80)} is not UTF-8") from None
    return str(name)


def storable(value: Any, depth: int = 0) -> Any:
    """``value`` (AMQP headers or properties of a rejected delivery) as JSON the database
    stores whatever it held: unstorable text escaped, other values shown as their repr."""
    if depth > JSON_DEPTH:
        return f"(nested deeper than {JSON_DEPTH} levels)"
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, bytes):
        return storable_text(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, dict):
        return {storable(str(k), depth + 1): storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v, depth + 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return printable(value, 200)
