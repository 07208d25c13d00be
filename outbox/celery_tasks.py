"""Plain Celery tasks sent through the outbox: sent if and only if the transaction commits.

``celery_task.delay()`` inside ``transaction.atomic()`` publishes at once: the task runs even
if the transaction then rolls back, or before it commits, and is lost if the process dies
between a commit and an ``on_commit`` send. :func:`send_task` instead writes the task, in
Celery's own message protocol (built by Celery: ``app.amqp.as_task_v2``), as an outbox row
in the caller's transaction; the relay publishes it under a publisher confirm to the task's
Celery queue, where any Celery worker runs it unchanged. With ``acks_late`` and
``@inbox.exactly_once`` the task's effects also happen once per task id.

A task row's topic is ``celery:<task name>``; the queue it goes to travels in the reserved
header ``wire.ROUTE_HEADER``, which the relay takes off. It is published to the queue by name
(the default exchange, as Celery's direct routing does), so a missing queue makes it
unroutable, handled by ``UNROUTABLE`` like any message.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import celery
from celery.result import AsyncResult
from django.db import connections

from .exceptions import PublishError
from .wire import ROUTE_HEADER, TASK_TOPIC_PREFIX

logger = logging.getLogger(__name__)

#: ``apply_async`` options an outbox task understands; any other is refused, not dropped.
OPTIONS = frozenset({"queue", "countdown", "eta", "expires", "task_id", "using"})


def send_task(
    name: str,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    countdown: float | None = None,
    eta: dt.datetime | None = None,
    expires: float | dt.datetime | None = None,
    task_id: str | None = None,
    using: str | None = None,
) -> AsyncResult[Any]:
    """Send Celery task ``name`` once the surrounding transaction commits (never if it rolls
    back), through the outbox; return its ``AsyncResult``.

    ``queue`` is the Celery queue (by default the one Celery's routing picks for ``name``).
    ``countdown``/``eta`` are delayed delivery: the row is sent when due (on the database's
    clock), so no worker holds an ETA task in memory meanwhile; ``expires`` means what it
    means to Celery, and an unsent task row also expires then. Arguments must be JSON.
    """
    from .publishing import publish  # models: only once the app registry is ready

    app = celery.current_app
    task_id = task_id or str(uuid.uuid4())
    if countdown is not None and eta is not None:
        raise PublishError("send_task takes countdown or eta, not both.")
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    routed = app.amqp.router.route({"queue": queue} if queue else {}, name, args, kwargs)
    message = app.amqp.as_task_v2(
        task_id,
        name,
        args=args,
        kwargs=kwargs,
        expires=expires,  # no eta: the outbox holds the task until it is due
    )
    args_list, kwargs_dict, embed = message.body
    ttl, expires_at = _expiry(expires, countdown=countdown, eta=eta, header=message.headers)
    publish(
        f"{TASK_TOPIC_PREFIX}{name}",
        [list(args_list), kwargs_dict, embed],
        headers={**message.headers, ROUTE_HEADER: routed["queue"].name},
        ttl=ttl,
        expires_at=expires_at,
        delay=countdown,
        deliver_at=eta,
        using=using,
    )
    return AsyncResult(task_id, app=app)


def _expiry(
    expires: float | dt.datetime | None,
    *,
    countdown: float | None,
    eta: dt.datetime | None,
    header: dict[str, Any],
) -> tuple[float | None, dt.datetime | None]:
    """The task row's expiry, as ``publish()``'s ``(ttl, expires_at)``, for a task that
    expires at ``expires`` (a moment, or seconds from now); never worked out on this host's
    clock against the database's.

    A moment is the row's ``expires_at`` as given. Seconds are a TTL, which counts from the
    due time: the seconds less the countdown (both from the insert, on the database's
    clock). With an ``eta`` (a moment) the row expires at the moment Celery wrote in the
    task's ``expires`` header, the one the worker enforces."""
    if expires is None:
        return None, None
    if isinstance(expires, dt.datetime):
        return None, expires
    if eta is not None:
        return None, dt.datetime.fromisoformat(str(header["expires"]))
    return max(0.001, expires - (countdown or 0.0)), None


class OutboxTask(celery.Task[Any, Any]):
    """A Celery task base whose ``delay()`` and ``apply_async()`` go through the outbox::

        @shared_task(base=OutboxTask, acks_late=True)
        @exactly_once
        def charge(order_id): ...

        with transaction.atomic():
            order.save()
            charge.delay(order.id)  # sent if and only if this commits

    Eager mode (``task_always_eager``) runs the task in place as Celery does.
    """

    abstract = True

    def apply_async(  # type: ignore[override]  # the outbox takes fewer options, named
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        if self.app.conf.task_always_eager:
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise PublishError(
                f"{self.name}.apply_async() through the outbox takes {', '.join(sorted(OPTIONS))}; "
                f"not {', '.join(unknown)} (use app.send_task outside a transaction for those)."
            )
        return send_task(self.name, args, kwargs, task_id=task_id, **options)


def warn_direct_send(sender: str | None = None, **_: Any) -> None:
    """Celery's ``before_task_publish``: a task sent directly while a transaction is open is
    sent whether or not the transaction commits: say so (the outbox's relay never sends
    through Celery, so this sees only direct sends)."""
    if any(c.in_atomic_block for c in connections.all(initialized_only=True)):
        logger.warning(
            "outbox: Celery task %s was sent directly from inside transaction.atomic(): it is "
            "sent even if the transaction rolls back, and may run before it commits. Send it "
            "with outbox.send_task() or base=outbox.OutboxTask to send it on commit only.",
            sender,
        )
