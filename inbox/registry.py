"""Which handler consumes which topic. Filled by ``@handler`` in ``<app>/handlers.py``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from inbox_outbox.conf import get_settings

from .exceptions import HandlerRegistrationError
from .message import Message

_TOPIC = re.compile(r"^[A-Za-z0-9_.:-]+$")

#: A handler receives the message; what it returns is not used.
HandlerFunc = Callable[[Message], object]
H = TypeVar("H", bound=HandlerFunc)


@dataclass(frozen=True)
class Handler:
    """A registered handler: its own consumer, with its own dedup records and retries."""

    name: str
    topics: tuple[str, ...]
    func: HandlerFunc
    max_attempts: int | None = None

    @property
    def consumer(self) -> str:
        """The dedup identity: the service name scopes it, so services sharing a database stay apart."""
        return f"{get_settings().service}:{self.name}"


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, handler: Handler) -> None:
        existing = self._handlers.get(handler.name)
        if existing is not None and existing.func is not handler.func:
            raise HandlerRegistrationError(
                f"Two handlers are named {handler.name!r}: {_where(existing.func)} and "
                f"{_where(handler.func)}. Pass name=… to @handler to give one of them another name."
            )
        self._handlers[handler.name] = handler

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)

    def for_topic(self, topic: str) -> list[Handler]:
        return [h for h in self._handlers.values() if topic in h.topics]

    def for_consumer(self, consumer: str) -> Handler | None:
        return next((h for h in self._handlers.values() if h.consumer == consumer), None)

    def topics(self) -> set[str]:
        return {t for h in self._handlers.values() for t in h.topics}

    def all(self) -> list[Handler]:
        return list(self._handlers.values())


registry = Registry()


def _where(func: HandlerFunc) -> str:
    return f"{func.__module__}.{getattr(func, '__qualname__', func)}"


def handler(
    *topics: str, name: str | None = None, max_attempts: int | None = None
) -> Callable[[H], H]:
    """Register a function as the consumer of ``topics``.

    The function receives an :class:`inbox.Message` and runs inside the transaction
    that records the message in the inbox: its writes commit exactly once. Its
    consumer name defaults to the function's dotted path; renaming the function
    therefore starts a new consumer, so pass ``name=`` to keep a stable identity.
    """
    if not topics:
        raise HandlerRegistrationError(
            "@handler needs at least one topic, e.g. @handler('orders.placed')."
        )
    for topic in topics:
        if not isinstance(topic, str) or not _TOPIC.match(topic):
            raise HandlerRegistrationError(
                f"Topic {topic!r} is not valid: use letters, digits and . _ : - (no AMQP wildcards)."
            )
    if max_attempts is not None and max_attempts < 1:
        raise HandlerRegistrationError(f"max_attempts must be at least 1, got {max_attempts}.")

    def decorate(func: H) -> H:
        registry.register(Handler(name or _where(func), tuple(topics), func, max_attempts))
        return func

    return decorate
