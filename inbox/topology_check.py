"""The service's declared topology compared with what the broker has, for
``manage.py inbox_topology``: each exchange and queue present, of the type and arguments the
settings ask for (the broker says so when asked to declare the same again: it refuses a
difference with ``PRECONDITION_FAILED`` and changes nothing), and the bindings a removed
handler left behind.

Nothing here creates or changes anything on the broker: a queue is first looked up
passively, and only one that exists is declared again, which for an equal queue is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import amqp
import kombu

from inbox_outbox.broker import events_exchange
from inbox_outbox.conf import get_settings

from . import bindings, topology


@dataclass(frozen=True)
class Found:
    """One exchange or queue: what the service declares, and what the broker has."""

    kind: str
    name: str
    declared: str
    #: ``ok``, ``missing`` or ``mismatch``.
    state: str
    #: The broker's reply for a mismatch; message and consumer counts for a queue.
    detail: str = ""


@dataclass(frozen=True)
class TopologyReport:
    objects: list[Found]
    #: The topics the service queue is bound to (one per handler topic).
    topics: list[str]
    #: Topics bound earlier that no handler declares any more.
    stale_topics: list[str]

    @property
    def problems(self) -> list[str]:
        found = [f"{o.kind} {o.name}: {o.state} {o.detail}".strip() for o in self.objects]
        wrong = [line for o, line in zip(self.objects, found, strict=True) if o.state != "ok"]
        if self.stale_topics:
            wrong.append("bound to topics no handler declares: " + ", ".join(self.stale_topics))
        return wrong


def inspect(connection: kombu.Connection) -> TopologyReport:
    """Compare the service's topology with the broker's, changing nothing."""
    conf = get_settings()
    events = events_exchange()
    objects = [_exchange(connection, events)]
    dead_letter_queue = topology.dead_letter_queue(conf)
    if dead_letter_queue is not None:
        objects.append(_exchange(connection, topology.dead_letter_exchange(conf)))
        objects.append(_queue(connection, dead_letter_queue))
    queue = topology.service_queue()
    objects.append(_queue(connection, queue))
    return TopologyReport(
        objects=objects,
        topics=sorted(b.routing_key for b in queue.bindings),
        stale_topics=bindings.stale(),
    )


def _exchange(connection: kombu.Connection, exchange: kombu.Exchange) -> Found:
    declared = f"{exchange.type}, durable"

    def passive(channel: Any) -> str:
        channel.exchange_declare(exchange.name, exchange.type, passive=True)
        return ""

    def again(channel: Any) -> None:
        channel.exchange_declare(exchange.name, exchange.type, durable=True, auto_delete=False)

    return _look(connection, "exchange", exchange.name, declared, passive, again)


def _queue(connection: kombu.Connection, queue: kombu.Queue) -> Found:
    arguments = queue.queue_arguments or None
    declared = topology.describe(arguments)

    def passive(channel: Any) -> str:
        ok = channel.queue_declare(queue.name, passive=True)
        return f"({ok.message_count} messages, {ok.consumer_count} consumers)"

    def again(channel: Any) -> None:
        channel.queue_declare(queue.name, durable=True, auto_delete=False, arguments=arguments)

    return _look(connection, "queue", queue.name, declared, passive, again)


def _look(
    connection: kombu.Connection,
    kind: str,
    name: str,
    declared: str,
    passive: Any,
    again: Any,
) -> Found:
    """``passive`` finds the object (a 404 closes its channel: one channel per question),
    then ``again`` asks for the declared arguments, which the broker refuses if they differ."""
    channel: Any = connection.channel()
    try:
        counts = passive(channel)
    except amqp.exceptions.NotFound:
        return Found(kind=kind, name=name, declared=declared, state="missing")
    finally:
        topology.close_quietly(channel)
    channel = connection.channel()
    try:
        again(channel)
    except amqp.exceptions.PreconditionFailed as exc:
        reply = getattr(exc, "reply_text", None) or str(exc)
        return Found(kind=kind, name=name, declared=declared, state="mismatch", detail=reply)
    finally:
        topology.close_quietly(channel)
    return Found(kind=kind, name=name, declared=declared, state="ok", detail=counts)
