"""``OutboxTaskBackend``: Django's Tasks framework through the outbox and the inbox.

``enqueue()`` publishes the task as an outbox message (topic ``django.tasks.<queue_name>``)
and writes its :class:`~inbox_outbox_tasks.models.TaskRun` row, both through the caller's
connection and inside its transaction. The result id is the outbox message's id, so the inbox
row that records the run, ``(<SERVICE>:django-tasks.<queue_name>, result id)``, makes a
redelivered task a no-op (``running.py``). ``get_result()`` reads both rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from django.core import checks
from django.db import router, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

import outbox
from inbox.models import InboxMessage
from inbox.models import Status as InboxStatus
from inbox_outbox.conf import get_settings

from .compat import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
)
from .models import Status, TaskRun

if TYPE_CHECKING:  # at run time Django's Task and TaskResult are plain dataclasses
    from typing import ParamSpec, TypeVar

    P = ParamSpec("P")
    R = TypeVar("R")
    AnyTask = Task[..., Any]
    AnyResult = TaskResult[..., Any]

#: A queue name becomes part of a topic and a handler's name.
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


def topic_for(queue_name: str) -> str:
    """The outbox topic (and AMQP routing key) of a task queue."""
    return f"django.tasks.{queue_name}"


def handler_name(queue_name: str) -> str:
    """The inbox handler that runs a queue's tasks: its consumer is ``<SERVICE>:<this>``."""
    return f"django-tasks.{queue_name}"


class OutboxTaskBackend(BaseTaskBackend):
    """Tasks enqueued in the caller's transaction, sent by the relay, run once in effect by
    the inbox worker.

    OPTIONS: ``DATABASE``, the alias to write to (default: the router's choice for the
    outbox; use the alias your business writes go through, or the task is not part of
    their transaction).

    ``run_after`` is delayed delivery (``supports_defer``); ``queue_name`` picks the topic;
    ``priority`` is not supported (refused by Django's validation): the service queue is one
    FIFO queue, and RabbitMQ's per-message priorities exist only on classic queues declared
    with ``x-max-priority``.
    """

    supports_defer = True
    supports_get_result = True
    supports_async_task = False
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.database: str | None = self.options.get("DATABASE")

    def _alias(self) -> str:
        return self.database or router.db_for_write(TaskRun)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors: list[checks.CheckMessage] = []
        for name in sorted(self.queues):
            if not _QUEUE_NAME.match(name):
                errors.append(
                    checks.Error(
                        f"Task queue name {name!r} of backend {self.alias!r} is not usable as a "
                        "topic.",
                        hint="Use 1-200 letters, digits and . _ : - in QUEUES.",
                        id="inbox_outbox_tasks.E001",
                    )
                )
        return errors

    def enqueue(
        self, task: Task[P, R], args: list[Any], kwargs: dict[str, Any]
    ) -> TaskResult[P, R]:
        """Write the task through the caller's transaction; it runs only if that commits."""
        self.validate_task(task)
        args, kwargs = _json_arguments(task, list(args), dict(kwargs))
        alias = self._alias()
        with transaction.atomic(using=alias):
            message = outbox.publish(
                topic_for(task.queue_name),
                {"task": task.module_path, "args": args, "kwargs": kwargs, "backend": self.alias},
                deliver_at=task.run_after,
                using=alias,
            )
            run = TaskRun.objects.using(alias).create(
                id=str(message.id),
                task_path=task.module_path,
                queue_name=task.queue_name,
                backend=self.alias,
                args=args,
                kwargs=kwargs,
                run_after=task.run_after,
                enqueued_at=timezone.now(),
            )
        result = cast(
            "TaskResult[P, R]", _result(run, task, status=TaskResultStatus.READY, errors=[])
        )
        # Enqueued means committed: the signal fires then (at once outside a transaction).
        transaction.on_commit(
            lambda: task_enqueued.send(type(self), task_result=result), using=alias
        )
        return result

    def get_result(self, result_id: str) -> AnyResult:
        """The task's state from the database: its row, and the inbox row of its run."""
        alias = self.database or router.db_for_read(TaskRun)
        run = TaskRun.objects.using(alias).filter(id=str(result_id)).first()
        if run is None:
            raise TaskResultDoesNotExist(result_id)
        task = _task(run)
        consumer = f"{get_settings().service}:{handler_name(run.queue_name)}"
        stored = (
            InboxMessage.objects.using(alias)
            .filter(consumer=consumer, message_id=run.id)
            .values("status", "traceback", "last_error")
            .first()
        )
        errors = [_error(stored)] if stored and stored["traceback"] else []
        if run.status == Status.SUCCESSFUL:
            status, errors = TaskResultStatus.SUCCESSFUL, []
        elif stored is not None and stored["status"] == InboxStatus.DEAD:
            status = TaskResultStatus.FAILED
        elif stored is not None and stored["status"] == InboxStatus.FAILED:
            status = TaskResultStatus.READY  # it failed and will be tried again
        elif run.status == Status.RUNNING:
            status = TaskResultStatus.RUNNING
        else:
            status = TaskResultStatus.READY
        return _result(run, task, status=status, errors=errors)


def _json_arguments(task: AnyTask, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The arguments as strict JSON values (never pickle), or ``InvalidTask`` now rather than
    an error in the worker."""
    try:
        text = json.dumps([args, kwargs], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidTask(
            f"The arguments of task {task.module_path} must be JSON (str, int, float, bool, "
            f"None, lists and dicts with str keys, no NaN): {exc}. Pass ids, not objects."
        ) from None
    decoded_args, decoded_kwargs = json.loads(text)
    return decoded_args, decoded_kwargs


def _task(run: TaskRun) -> AnyTask:
    task = import_string(run.task_path)
    if not isinstance(task, Task):
        raise TaskResultDoesNotExist(f"{run.task_path} is no longer a task")
    return task.using(queue_name=run.queue_name, backend=run.backend)


def _error(stored: Mapping[str, Any]) -> TaskError:
    """The inbox's record of the last failure as Django's ``TaskError``: the exception's class
    from the traceback's last line (``module.Class: message``; builtins have no module)."""
    last = stored["traceback"].rstrip().splitlines()[-1] if stored["traceback"] else ""
    name = last.split(":", 1)[0].strip() or "Exception"
    path = name if "." in name else f"builtins.{name}"
    return TaskError(exception_class_path=path, traceback=stored["traceback"])


def _result(
    run: TaskRun, task: AnyTask, *, status: TaskResultStatus, errors: list[TaskError]
) -> AnyResult:
    result: AnyResult = TaskResult(
        task=task,
        id=run.id,
        status=status,
        enqueued_at=run.enqueued_at,
        started_at=run.started_at,
        last_attempted_at=run.last_attempted_at,
        finished_at=run.finished_at,
        args=run.args,
        kwargs=run.kwargs,
        backend=run.backend,
        errors=errors,
        worker_ids=list(run.worker_ids),
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", run.return_value)
    return result


__all__ = ["OutboxTaskBackend", "handler_name", "topic_for"]
