"""Exactly-once effects for plain Celery tasks, by the same inbox mechanism."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar, overload

from django.db import transaction

from inbox_outbox.conf import get_settings
from inbox_outbox.limits import (
    ID_CHARS,
    TEXT_CHARS,
    LimitError,
    check_text,
    printable,
    storable_text,
)

from .exceptions import InvalidMessage
from .models import Status
from .processing import NewRow, _alias, _insert

P = ParamSpec("P")
R = TypeVar("R")


@overload
def exactly_once(
    func: Callable[P, R], *, key: Callable[..., str] | None = None, using: str | None = None
) -> Callable[P, R | None]: ...


@overload
def exactly_once(
    func: None = None, *, key: Callable[..., str] | None = None, using: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R | None]]: ...


def exactly_once(
    func: Callable[P, R] | None = None,
    *,
    key: Callable[..., str] | None = None,
    using: str | None = None,
) -> Callable[P, R | None] | Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Make a Celery task's effects happen once per task id (or per ``key(*args, **kwargs)``).

    The task body runs in a transaction together with an inbox row keyed by
    (``<service>:task:<task name>``, id); a redelivered or re-sent task finds the row
    and returns ``None`` without running (hence ``R | None``). Put it under ``@shared_task``::

        @shared_task(acks_late=True)
        @exactly_once(key=lambda order_id: f"charge-{order_id}")
        def charge(order_id): ...
    """

    def decorate(body: Callable[P, R]) -> Callable[P, R | None]:
        @functools.wraps(body)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
            from celery import current_task

            request = getattr(current_task, "request", None)
            if key is not None:
                message_id = str(key(*args, **kwargs))
            elif request is not None and request.id:
                message_id = str(request.id)
            else:
                raise RuntimeError(
                    f"{body.__qualname__} has no task id here; call it as a Celery task, or give "
                    "@exactly_once a key= function."
                )
            name = getattr(current_task, "name", None) or f"{body.__module__}.{body.__qualname__}"
            try:
                check_text(message_id, max_chars=ID_CHARS)
            except LimitError as exc:
                raise InvalidMessage(
                    f"{body.__qualname__}'s exactly-once id {printable(message_id, 80)} {exc}: "
                    "it is the dedup key, stored whole, so it must fit."
                ) from None
            row = NewRow(
                consumer=f"{get_settings().service}:task:{name}",
                message_id=message_id,
                status=Status.DONE,
                topic=storable_text(f"task:{name}"[:TEXT_CHARS]),  # a label; the id is the key
            )
            alias = _alias(using)
            with transaction.atomic(using=alias):
                if not _insert(alias, row):
                    return None
                return body(*args, **kwargs)

        return wrapper

    return decorate(func) if func is not None else decorate
