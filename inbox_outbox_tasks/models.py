"""One row per enqueued task: what to run, and what became of it."""

from __future__ import annotations

from django.db import models


class Status(models.TextChoices):
    """Django's ``TaskResultStatus`` values, as stored."""

    READY = "READY", "Ready"
    RUNNING = "RUNNING", "Running"
    FAILED = "FAILED", "Failed"
    SUCCESSFUL = "SUCCESSFUL", "Successful"


class TaskRun(models.Model):
    """A task result. ``id`` is the result id and the id of the outbox message that carries
    the task, so the inbox's dedup key for it is the result id."""

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    task_path = models.CharField(max_length=255)
    queue_name = models.CharField(max_length=255)
    backend = models.CharField(max_length=255)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY)
    run_after = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    #: The return value when it is JSON; None otherwise (and ``returned_json`` False).
    return_value = models.JSONField(null=True, blank=True)
    returned_json = models.BooleanField(default=True)
    worker_ids = models.JSONField(default=list)

    objects: models.Manager[TaskRun] = models.Manager()

    class Meta:
        db_table = "inbox_outbox_task"
        ordering = ["-enqueued_at"]
        verbose_name = "task"

    def __str__(self) -> str:
        return f"{self.task_path} {self.id}"
