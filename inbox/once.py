"""Exactly-once effects for plain Celery tasks, by the same inbox mechanism."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import transaction

from inbox_outbox.conf import get_settings

from .models import Status
from .processing import _alias, _insert

F = TypeVar("F", bound=Callable[..., Any])


def exactly_once(
    func: F | None = None, *, key: Callable[..., str] | None = None, using: str | None = None
) -> Any:
    """Make a Celery task's effects happen once per task id (or per ``key(*args, **kwargs)``).

    The task body runs in a transaction together with an inbox row keyed by
    (``<service>:task:<task name>``, id); a redelivered or re-sent task finds the row
    and returns ``None`` without running. Put it under ``@shared_task``::

        @shared_task(acks_late=True)
        @exactly_once(key=lambda order_id: f"charge-{order_id}")
        def charge(order_id): ...
    """

    def decorate(body: F) -> F:
        @functools.wraps(body)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
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
            alias = _alias(using)
            with transaction.atomic(using=alias):
                if not _insert(
                    alias,
                    consumer=f"{get_settings().service}:task:{name}",
                    message_id=message_id,
                    status=Status.DONE,
                    envelope=None,
                    topic=f"task:{name}",
                ):
                    return None
                return body(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate
