"""The topics the service's queue is bound to: remembered when a worker declares the queue,
and unbound when no handler declares them any more.

AMQP cannot list a queue's bindings (only the management API can), and the broker keeps a
binding until someone removes it: a handler removed from the code leaves its topic bound, and
its messages keep arriving to be stored ``rejected`` ("no handler for topic"). So each
declare records its topics in ``inbox_queue_binding``, and :func:`unbind_stale` removes from
the broker, then forgets, what the service bound earlier and declares no longer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kombu
from django.db import DatabaseError

from inbox_outbox.broker import events_exchange
from inbox_outbox.conf import get_settings

from .models import QueueBinding
from .registry import registry

logger = logging.getLogger(__name__)


def remember(queue: str, topics: Iterable[str]) -> None:
    """Record that ``queue`` is bound to ``topics``. A database that cannot take it now
    costs nothing but the record: the next declare writes it."""
    rows = [QueueBinding(queue=queue, topic=topic) for topic in topics]
    try:
        QueueBinding.objects.bulk_create(rows, ignore_conflicts=True)
    except DatabaseError:
        logger.warning(
            "inbox: could not record the bindings of queue %s (the database is unavailable); "
            "the next worker start records them",
            queue,
            exc_info=True,
        )


def stale() -> list[str]:
    """Topics the service's queue was bound to that no handler of this service declares."""
    queue = get_settings().queue_name
    bound = QueueBinding.objects.filter(queue=queue).values_list("topic", flat=True)
    return sorted(set(bound) - set(registry.topics()))


def unbind_stale(connection: kombu.Connection) -> list[str]:
    """Unbind the stale topics from the service queue on the broker, then forget them;
    return them. Unbinding a binding that does not exist is a no-op for the broker, so a
    crash in between is repaired by running it again."""
    queue = get_settings().queue_name
    exchange = events_exchange().name
    topics = stale()
    channel: Any = connection.channel()  # py-amqp's (its stubs lack queue_unbind)
    try:
        for topic in topics:
            channel.queue_unbind(queue, exchange, routing_key=topic)
            QueueBinding.objects.filter(queue=queue, topic=topic).delete()
    finally:
        channel.close()
    return topics
