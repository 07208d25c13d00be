"""Django's Tasks framework, from ``django.tasks`` (Django 6.0+).

The ``django-tasks`` backport (Django 4.2/5.2) is not supported yet. It has the same shape
under ``django_tasks`` but differs where this backend depends on it: the finished state is
``TaskResultStatus.SUCCEEDED`` (Django 6: ``SUCCESSFUL``); ``Task`` has an ``enqueue_on_commit``
field, which for this backend must be refused or ignored (enqueueing is already part of the
transaction; deferring it to ``on_commit`` is the dual write this backend exists to avoid);
and older releases name the errors ``InvalidTaskError`` and ``ResultDoesNotExist`` and the
handler ``tasks``. Supporting it means mapping those names here, and a test run on 5.2.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

try:
    from django.tasks import Task, TaskResultStatus, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskContext, TaskError, TaskResult
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError as exc:  # pragma: no cover - Django < 6
    raise ImproperlyConfigured(
        "inbox_outbox_tasks needs Django 6.0 or later (django.tasks); the django-tasks "
        "backport for Django 4.2/5.2 is not supported yet (see inbox_outbox_tasks/compat.py)."
    ) from exc

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
