"""``inbox_outbox_tasks.compat`` picks Django's Tasks framework: ``django.tasks`` on Django 6
(even with the backport installed beside it), the ``django-tasks`` backport before."""

import importlib

import django

from inbox_outbox_tasks import compat


def test_the_tasks_framework_is_django_s_own_on_6_and_the_backport_before():
    package = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
    base = importlib.import_module(f"{package}.base")
    signals = importlib.import_module(f"{package}.signals")
    exceptions = importlib.import_module(f"{package}.exceptions")
    assert compat.Task is base.Task and compat.TaskResult is base.TaskResult
    assert compat.TaskResultStatus is base.TaskResultStatus
    assert (
        compat.BaseTaskBackend
        is importlib.import_module(f"{package}.backends.base").BaseTaskBackend
    )
    assert compat.task_started is signals.task_started
    assert compat.task_finished is signals.task_finished
    assert compat.task_enqueued is signals.task_enqueued
    assert issubclass(compat.InvalidTask, exceptions.TaskException)
    assert compat.TaskResultDoesNotExist is exceptions.TaskResultDoesNotExist
