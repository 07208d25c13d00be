"""The service's broker topology: its queue, classic or quorum, and for a quorum queue the
dead-letter exchange and queue declared with it.

A quorum service queue is declared with a delivery limit, so a message that kills every
worker that takes it (or that no worker ever settles) ends in the service's dead-letter
queue instead of circling forever, and with at-least-once dead-lettering, so the broker
moves it there under publisher confirms and never drops it on the way (RabbitMQ requires
``x-overflow: reject-publish`` for that). The dead-letter queue is ``<queue>.dead-letter``,
fed by a fanout exchange of the same name; ``inbox_status`` shows its depth and
``inbox_dead_letters --requeue`` moves its messages back.

Declaring is idempotent: the same arguments again are a no-op for the broker. A queue that
exists with other arguments (a classic queue asked to be quorum, another delivery limit) is
refused by the broker with ``PRECONDITION_FAILED``; :func:`declare` turns that into
:class:`TopologyMismatch`, naming the queue, what it has and what was asked, and how to move.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import amqp
import kombu
from amqp import spec
from django.core.exceptions import ImproperlyConfigured

from inbox_outbox.broker import connect, events_exchange
from inbox_outbox.conf import Settings, get_settings

from . import bindings
from .exceptions import InboxError
from .registry import registry

logger = logging.getLogger(__name__)

#: The broker's management API, when its plugin is enabled: read to show what a queue has.
MANAGEMENT_PORT = 15672
MANAGEMENT_TIMEOUT = 2.0

#: Headers the broker sets on each delivery; a message moved back starts its count afresh.
BROKER_COUNT_HEADERS = ("x-delivery-count", "x-acquired-count")


class TopologyMismatch(InboxError, ImproperlyConfigured):
    """Raised when a queue or exchange exists on the broker with other arguments than this
    service declares (``PRECONDITION_FAILED``): the broker never changes an existing queue."""


def queue_arguments(conf: Settings | None = None) -> dict[str, Any] | None:
    """The service queue's ``x-`` arguments: none for a classic queue (as it always was
    declared, so existing queues redeclare cleanly), the quorum set otherwise."""
    conf = conf or get_settings()
    if conf.queue_type != "quorum":
        return None
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": conf.delivery_limit,
        "x-dead-letter-exchange": conf.dead_letter_name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def service_queue() -> kombu.Queue:
    """The service's durable queue, bound to every topic its handlers declare.

    All workers of one service share it (a consumer group); another service has its own.
    """
    conf = get_settings()
    exchange = events_exchange()
    topics = sorted(registry.topics())
    return kombu.Queue(
        conf.queue_name,
        exchange=exchange,
        durable=True,
        auto_delete=False,
        queue_arguments=queue_arguments(conf),
        bindings=[kombu.binding(exchange, routing_key=t) for t in topics],
    )


def dead_letter_exchange(conf: Settings | None = None) -> kombu.Exchange:
    conf = conf or get_settings()
    return kombu.Exchange(conf.dead_letter_name, "fanout", durable=True, auto_delete=False)


def dead_letter_queue(conf: Settings | None = None) -> kombu.Queue | None:
    """The service's dead-letter queue (a quorum queue too), or None for a classic queue."""
    conf = conf or get_settings()
    if conf.queue_type != "quorum":
        return None
    return kombu.Queue(
        conf.dead_letter_name,
        exchange=dead_letter_exchange(conf),
        routing_key="",
        durable=True,
        auto_delete=False,
        queue_arguments={"x-queue-type": "quorum"},
    )


def declare(connection: kombu.Connection) -> kombu.Queue:
    """Declare the service's topology on a channel of its own; return the service queue.

    The dead-letter exchange and queue first, so that nothing the service queue dead-letters
    has nowhere to go. Raises :class:`TopologyMismatch` for an existing queue of another
    type or other arguments. Records the topics bound (:mod:`inbox.bindings`).
    """
    conf = get_settings()
    queue = service_queue()
    objects = [q for q in (dead_letter_queue(conf), queue) if q is not None]
    channel = connection.channel()
    try:
        for each in objects:
            try:
                each(channel).declare()
            except amqp.exceptions.PreconditionFailed as exc:
                raise mismatch(connection, each, exc) from exc
    finally:
        close_quietly(channel)
    bindings.remember(queue.name, (b.routing_key for b in queue.bindings))
    return queue


def mismatch(connection: kombu.Connection, queue: kombu.Queue, exc: Exception) -> TopologyMismatch:
    """The error for ``queue`` existing on the broker with arguments other than asked."""
    conf = get_settings()
    asked = describe(queue.queue_arguments)
    existing = _management_arguments(connection, queue.name)
    has = (
        describe(existing)
        if existing is not None
        else "(not readable: the broker's management API is not reachable; its reply names "
        "the argument that differs)"
    )
    reply = getattr(exc, "reply_text", None) or str(exc)
    return TopologyMismatch(
        f"The broker already has a queue {queue.name!r} with other arguments than this service "
        f"declares (INBOX_OUTBOX QUEUE_TYPE={conf.queue_type!r}, "
        f"DELIVERY_LIMIT={conf.delivery_limit}). It has: {has}. Asked for: {asked}. The broker "
        f"said: {reply}. The broker never changes an existing queue: set QUEUE_TYPE back to "
        "what the queue is, or move to the new queue as docs/operations.md ('Moving to quorum "
        "queues') describes (stop the workers, drain or shovel the old queue, delete it, start "
        "the workers with the new setting)."
    )


def describe(arguments: dict[str, Any] | None) -> str:
    arguments = dict(arguments or {})
    kind = arguments.pop("x-queue-type", "classic")
    rest = ", ".join(f"{k}={v!r}" for k, v in sorted(arguments.items()))
    return f"a {kind} queue" + (f" with {rest}" if rest else " with no x- arguments")


def _management_arguments(connection: kombu.Connection, name: str) -> dict[str, Any] | None:
    """``name``'s type and arguments as the management API reports them, or None."""
    vhost = urllib.parse.quote(connection.virtual_host or "/", safe="")
    url = f"http://{connection.hostname or 'localhost'}:{MANAGEMENT_PORT}/api/queues/{vhost}/"
    url += urllib.parse.quote(name, safe="")
    token = base64.b64encode(f"{connection.userid}:{connection.password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=MANAGEMENT_TIMEOUT) as response:
            info = json.loads(response.read())
    except Exception:  # no plugin, no permission, another host: say so instead
        return None
    arguments = dict(info.get("arguments") or {})
    arguments.setdefault("x-queue-type", info.get("type", "classic"))
    return arguments


@dataclass(frozen=True)
class DeadLetters:
    """The dead-letter queue's name and depth (None: the queue type has none, or it is not
    declared yet)."""

    queue: str | None
    depth: int | None


def dead_letters(connection: kombu.Connection | None = None) -> DeadLetters:
    """How many messages wait in the service's dead-letter queue (a passive declare)."""
    conf = get_settings()
    queue = dead_letter_queue(conf)
    if queue is None:
        return DeadLetters(queue=None, depth=None)
    own = connection is None
    connection = connection or connect()
    try:
        channel: Any = connection.channel()  # py-amqp's (its stubs lack queue_declare)
        try:
            depth = channel.queue_declare(queue.name, passive=True).message_count
        except connection.channel_errors:  # not declared yet: no worker has started
            return DeadLetters(queue=queue.name, depth=None)
        close_quietly(channel)
        return DeadLetters(queue=queue.name, depth=depth)
    finally:
        if own:
            connection.release()


def dead_letters_shown() -> int | str | None:
    """The dead-letter queue's depth as operators see it (``inbox_status``, the admin): a
    number, a sentence when it cannot be read, None for a classic queue (it has none). An
    unreachable broker is said, never raised: the database's counts still help."""
    try:
        found = dead_letters()
    except Exception as exc:
        logger.debug("inbox: dead-letter queue not readable", exc_info=True)
        return f"unknown (broker unavailable: {exc})"
    if found.queue is None:
        return None
    return "not declared yet" if found.depth is None else found.depth


class RequeueStopped(InboxError):
    """Raised when the service queue refused a message moved back from the dead-letter
    queue (full, or unavailable): that message stays in the dead-letter queue."""


def requeue_dead_letters(
    connection: kombu.Connection | None = None, *, limit: int | None = None
) -> int:
    """Move up to ``limit`` (all, if None) dead-lettered messages back to the service queue;
    return how many moved.

    Each is published to the service queue straight (the default exchange, so no other
    service sees it again) under a publisher confirm, and only then acknowledged in the
    dead-letter queue: a crash in between leaves it in both, and the inbox deduplicates
    it by id. The broker's delivery counts are dropped from its headers; ``x-death`` stays,
    the history of its dead-lettering.
    """
    conf = get_settings()
    queue = dead_letter_queue(conf)
    if queue is None:
        return 0
    own = connection is None
    connection = connection or connect()
    moved = 0
    try:
        channel: Any = connection.channel()
        channel.queue_declare(conf.queue_name, passive=True)  # it exists: nowhere else to go
        channel.confirm_select()
        while limit is None or moved < limit:
            message = channel.basic_get(queue.name, no_ack=False)
            if message is None:
                break
            properties = dict(message.properties)
            headers = {
                k: v
                for k, v in (properties.pop("application_headers", None) or {}).items()
                if k not in BROKER_COUNT_HEADERS
            }
            try:
                channel.basic_publish_confirm(
                    amqp.Message(message.body, application_headers=headers, **properties),
                    exchange="",
                    routing_key=conf.queue_name,
                    mandatory=True,
                )
            except amqp.exceptions.MessageNacked as exc:
                nack(channel, message.delivery_tag)
                raise RequeueStopped(
                    f"the queue {conf.queue_name!r} refused a message ({moved} moved so far); "
                    "it is full or unavailable: try again when its consumers caught up"
                ) from exc
            channel.basic_ack(message.delivery_tag)
            moved += 1
        close_quietly(channel)
    finally:
        if own:
            connection.release()
    return moved


def nack(channel: Any, delivery_tag: Any) -> None:
    """``basic.nack`` with requeue for one delivery (py-amqp 5 has no helper for it: the
    method is (60, 120), arguments delivery tag, multiple, requeue). Never ``basic.reject``:
    RabbitMQ 4.3 charges rejects, not nacks, to a quorum queue's delivery limit."""
    channel.send_method(spec.Basic.Nack, "Lbb", (delivery_tag, False, True))


def close_quietly(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # closed by the broker already (a 406 closes it)
        logger.debug("inbox: error closing a topology channel", exc_info=True)
