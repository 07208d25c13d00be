"""Running an enqueued task in the inbox worker, inside the transaction that records it.

The inbox inserts its row ``(<SERVICE>:django-tasks.<queue>, result id)`` first: a task
delivered again finds it and is not run again. The task's own database writes, its result and
the inbox row commit together; an exception rolls them all back and the inbox retries it with
backoff up to its limit, then leaves it dead, as for any handler (``RetryAfter`` and
``DoNotRetry`` work too).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

from django.db import connections, router
from django.db.models.functions import Now
from django.utils import timezone

from inbox import Message

from .backend import _result, _task
from .compat import TaskContext, TaskResultStatus, normalize_json, task_finished, task_started
from .models import Status, TaskRun

logger = logging.getLogger(__name__)

#: This process, as Django's ``worker_ids`` names it.
WORKER_ID = f"{socket.gethostname()[:40]}:{os.getpid()}"


def run_task(message: Message) -> None:
    """The inbox handler of every task queue: run the task ``message`` carries."""
    alias = router.db_for_write(TaskRun)
    _mark_running(alias, message.id)
    run = TaskRun.objects.using(alias).select_for_update().filter(id=message.id).first()
    if run is None:
        logger.warning("django tasks: no result row for %s; running it anyway", message.id)
        run = _unrecorded(message)
    task = _task(run)
    result = _result(run, task, status=TaskResultStatus.RUNNING, errors=[])
    task_started.send(type(task.get_backend()), task_result=result)
    try:
        if task.takes_context:
            raw = task.call(TaskContext(task_result=result), *run.args, **run.kwargs)
        else:
            raw = task.call(*run.args, **run.kwargs)
    except BaseException:
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        task_finished.send(type(task.get_backend()), task_result=result)
        raise
    value, is_json = _json_or_none(raw)
    TaskRun.objects.using(alias).filter(id=message.id).update(
        status=Status.SUCCESSFUL, finished_at=Now(), return_value=value, returned_json=is_json
    )
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "_return_value", value)
    task_finished.send(type(task.get_backend()), task_result=result)


def _mark_running(alias: str, result_id: str) -> None:
    """Show the task running now, on a connection of its own (the inbox's transaction commits
    only when the task is done): attempt time and this worker's id. PostgreSQL only; a failed
    write costs only the state shown."""
    if connections[alias].vendor != "postgresql":
        return
    side = connections.create_connection(alias)
    try:
        with side.cursor() as cursor:
            cursor.execute(
                f"UPDATE {TaskRun._meta.db_table} SET status = %s, "
                "started_at = COALESCE(started_at, now()), last_attempted_at = now(), "
                "worker_ids = worker_ids || %s::jsonb WHERE id = %s AND status <> %s",
                [Status.RUNNING, json.dumps([WORKER_ID]), result_id, Status.SUCCESSFUL],
            )
    except Exception:
        logger.warning("django tasks: could not mark %s running", result_id, exc_info=True)
    finally:
        side.close()


def _unrecorded(message: Message) -> TaskRun:
    body: dict[str, Any] = message.data
    return TaskRun(
        id=message.id,
        task_path=body["task"],
        queue_name=message.topic.removeprefix("django.tasks."),
        backend=body.get("backend", "default"),
        args=body.get("args", []),
        kwargs=body.get("kwargs", {}),
        enqueued_at=message.time or timezone.now(),  # a CloudEvent's time is optional
    )


def _json_or_none(value: Any) -> tuple[Any, bool]:
    """The return value as JSON, or None when it is not JSON (and say so)."""
    try:
        normalized = normalize_json(value)
        json.dumps(normalized, allow_nan=False)
    except (TypeError, ValueError):
        return None, False
    return normalized, True
