"""Helpers for your own test suite: deliver messages to your handlers without a broker.

They go through the same inbox code as a worker, against your test database, so a
message delivered twice has its effect once, exactly as in production::

    from inbox.testing import deliver

    def test_payment_marks_order_paid(db):
        deliver("payments.captured", {"order_id": 1}, id="evt-1")
        deliver("payments.captured", {"order_id": 1}, id="evt-1")  # a duplicate: no effect
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone
from uuid6 import uuid7

from inbox_outbox.cloudevents import CONTENT_TYPE, encode
from inbox_outbox.conf import get_settings

from .processing import Outcome, process_delivery


@dataclass(frozen=True)
class _TestEvent:
    """A :class:`~inbox_outbox.cloudevents.Event` made by a test: any id, not only a UUID."""

    id: uuid.UUID | str
    topic: str
    key: str | None
    sequence: int | None
    payload_json: str
    headers: dict[str, Any]
    created_at: dt.datetime
    epoch: int | None = None
    voids: uuid.UUID | None = None


def deliver(
    topic: str,
    data: Any,
    *,
    id: str | None = None,
    key: str | None = None,
    sequence: int | None = None,
    epoch: int | None = None,
    source: str | None = None,
    headers: dict[str, Any] | None = None,
    using: str | None = None,
) -> dict[str, Outcome]:
    """Deliver one CloudEvents message to this service's handlers; return each consumer's outcome.

    ``source`` (default: this service) and ``epoch`` stand for another producer's stream.
    """
    message = _TestEvent(
        id=uuid7() if id is None else id,
        topic=topic,
        key=key,
        sequence=sequence,
        payload_json=json.dumps(data, cls=DjangoJSONEncoder),
        headers=dict(headers or {}),
        created_at=timezone.now(),
        epoch=epoch,
    )
    body = encode(message, source=get_settings().service if source is None else source)
    return process_delivery(
        body,
        {"content_type": CONTENT_TYPE, "message_id": str(message.id), "type": topic},
        message.headers,
        using=using,
    )


def deliver_outbox(*, using: str | None = None) -> list[dict[str, Outcome]]:
    """Publish every due outbox row straight into this service's inbox, in relay order.

    For a service that installs both apps: the rows are marked sent as the real relay
    would (through :func:`outbox.testing.relay_to`); use it to test a flow that publishes
    and handles within one service.
    """
    from outbox.testing import relay_to  # needs the outbox app, as the flow it tests does

    outcomes: list[dict[str, Outcome]] = []

    def into_inbox(body: bytes, properties: dict[str, Any]) -> None:
        headers = properties.pop("application_headers", None)
        outcomes.append(process_delivery(body, properties, headers, using=using))

    relay_to(into_inbox, using=using)
    return outcomes
