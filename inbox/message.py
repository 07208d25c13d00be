"""The message object handlers receive."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    """One message, as handed to a handler.

    ``data`` is the payload; ``attempt`` counts from 1 and grows with each retry. A keyed
    message's position in its producer's stream is (``epoch``, ``sequence``).
    ``delivery_count`` is how often the broker had delivered the message before the delivery
    the inbox stored (a quorum queue's ``x-acquired-count`` or ``x-delivery-count``); None
    when the broker sent no count (a classic queue, or RabbitMQ 3.x's first delivery).
    """

    id: str
    topic: str
    data: Any
    headers: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    sequence: int | None = None
    source: str = ""
    time: dt.datetime | None = None
    attempt: int = 1
    epoch: int = 0
    delivery_count: int | None = None
