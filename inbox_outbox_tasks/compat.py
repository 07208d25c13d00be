"""Django's Tasks framework: ``django.tasks`` (Django 6.0+), else the ``django-tasks``
backport package (Django 4.2 and 5.2), which has the same API under ``django_tasks``."""

from __future__ import annotations

try:
    from django.tasks import Task, TaskResultStatus, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskContext, TaskError, TaskResult
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError:  # pragma: no cover - Django < 6 with the backport installed
    from django_tasks import (  # type: ignore[no-redef]
        Task,
        TaskResultStatus,
        task_backends,
    )
    from django_tasks.backends.base import BaseTaskBackend  # type: ignore[no-redef]
    from django_tasks.base import (  # type: ignore[no-redef]
        TaskContext,
        TaskError,
        TaskResult,
    )
    from django_tasks.exceptions import (  # type: ignore[no-redef]
        InvalidTask,
        TaskResultDoesNotExist,
    )
    from django_tasks.signals import (  # type: ignore[no-redef]
        task_enqueued,
        task_finished,
        task_started,
    )

__all__ = [
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
