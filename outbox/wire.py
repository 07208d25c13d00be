"""What one claimed row is on the wire: an event (a CloudEvent to the events exchange, routed
by its topic) or a Celery task (Celery's protocol, straight to its queue)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from inbox_outbox.cloudevents import Outgoing, amqp_properties, encode

#: The topic prefix of a Celery task row (``outbox.send_task``): the rest is the task's name.
TASK_TOPIC_PREFIX = "celery:"
#: The reserved header holding the Celery queue a task row goes to; not sent.
ROUTE_HEADER = "x-outbox-celery-queue"


@dataclass(frozen=True, slots=True)
class Frame:
    body: bytes
    #: AMQP basic properties, the headers under ``application_headers``.
    properties: dict[str, Any]
    exchange: str
    routing_key: str


def frame(message: Outgoing, *, exchange: str, source: str, now: dt.datetime) -> Frame:
    """``message`` ready to publish; raises one of the publisher's ``ENCODE_ERRORS`` if it
    cannot be encoded."""
    if message.topic.startswith(TASK_TOPIC_PREFIX):
        return _task(message)
    return Frame(
        body=encode(message, source=source),
        properties=amqp_properties(message, now=now),
        exchange=exchange,
        routing_key=message.topic,
    )


def _task(message: Outgoing) -> Frame:
    """A Celery task row: Celery's protocol 2 body and headers as ``send_task`` stored them,
    published to the default exchange, which routes by queue name as Celery's direct
    routing does."""
    headers = dict(message.headers)
    queue = str(headers.pop(ROUTE_HEADER))
    properties: dict[str, Any] = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "correlation_id": str(headers.get("id", message.id)),
        "delivery_mode": 2,
        "message_id": str(message.id),
        "application_headers": headers,
    }
    return Frame(
        body=message.payload_json.encode(), properties=properties, exchange="", routing_key=queue
    )
