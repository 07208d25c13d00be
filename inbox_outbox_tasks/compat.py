"""Django's Tasks framework: ``django.tasks`` (Django 6.0+), or else the ``django-tasks``
backport (``django_tasks``, 0.12 or later, for Django 4.2/5.2).

The one place that decides which is used: ``django.tasks`` whenever Django has it (a
``django_tasks`` installed beside Django 6 is ignored, as ``@task`` from it would make tasks
of another class), the backport otherwise. The two have the same shape; the backport names the
invalid-task error ``InvalidTaskError``, exported here as ``InvalidTask``, and has its own
``normalize_json`` (Django 6: ``django.utils.json``). Older backport
releases differ where this backend depends on them (``TaskResultStatus.SUCCEEDED``, a
``Task.enqueue_on_commit`` field, ``ResultDoesNotExist``) and are refused.

Type checking always sees ``django.tasks`` (django-stubs types it on any Django).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from django.tasks import Task, TaskResultStatus, task, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskContext, TaskError, TaskResult
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
else:
    try:
        import django.tasks  # noqa: F401  # Django 6.0+
    except ImportError:
        _BUILT_IN = False
    else:
        _BUILT_IN = True
    if _BUILT_IN:
        from django.tasks import Task, TaskResultStatus, task, task_backends
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import TaskContext, TaskError, TaskResult
        from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
        from django.tasks.signals import task_enqueued, task_finished, task_started
        from django.utils.json import normalize_json
    else:
        try:
            from django_tasks import TaskResultStatus, task, task_backends
            from django_tasks.backends.base import BaseTaskBackend
            from django_tasks.base import Task, TaskContext, TaskError, TaskResult
            from django_tasks.exceptions import InvalidTaskError as InvalidTask
            from django_tasks.exceptions import TaskResultDoesNotExist
            from django_tasks.signals import task_enqueued, task_finished, task_started
            from django_tasks.utils import normalize_json
        except ImportError as exc:
            raise ImproperlyConfigured(
                "inbox_outbox_tasks needs Django's Tasks framework: Django 6.0 or later "
                "(django.tasks), or on Django 4.2/5.2 the django-tasks backport 0.12 or later "
                "(pip install 'django-inbox-outbox[tasks]')."
            ) from exc
        if not hasattr(TaskResultStatus, "SUCCESSFUL"):
            raise ImproperlyConfigured(
                "inbox_outbox_tasks needs django-tasks 0.12 or later (this one names the "
                "finished state SUCCEEDED): pip install 'django-tasks>=0.12'."
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
    "normalize_json",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
