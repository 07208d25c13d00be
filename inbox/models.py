"""Inbox rows: one per (consumer, message id). The unique constraint is the dedup."""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class Status(models.TextChoices):
    DONE = "done", "Processed"
    WAITING = "waiting", "Waiting for an earlier message of its key"
    FAILED = "failed", "Failed (will retry)"
    DEAD = "dead", "Dead"
    REJECTED = "rejected", "Rejected (malformed or unknown)"
    STALE = "stale", "Stale (its sequence was already settled; not run)"
    VOID = "void", "Void (the producer gave up on this sequence)"


#: Statuses the retry sweeper may still act on.
OPEN = (Status.WAITING, Status.FAILED)


class InboxMessageQuerySet(models.QuerySet["InboxMessage"]):
    def done(self) -> InboxMessageQuerySet:
        return self.filter(status=Status.DONE)

    def waiting(self) -> InboxMessageQuerySet:
        return self.filter(status=Status.WAITING)

    def failed(self) -> InboxMessageQuerySet:
        return self.filter(status=Status.FAILED)

    def dead(self) -> InboxMessageQuerySet:
        return self.filter(status=Status.DEAD)

    def rejected(self) -> InboxMessageQuerySet:
        return self.filter(status=Status.REJECTED)

    def stale(self) -> InboxMessageQuerySet:
        return self.filter(status=Status.STALE)


class InboxMessage(models.Model):
    """A message as one consumer saw it.

    Inserted in the same transaction as the handler's writes; a second delivery of
    the same id to the same consumer hits the unique constraint and does nothing.
    Failed, dead and rejected rows keep the raw body so nothing is ever lost.
    """

    consumer = models.CharField(max_length=200)
    message_id = models.CharField(max_length=200)
    topic = models.CharField(max_length=255, blank=True, default="")
    #: The producing service (CloudEvents ``source``): part of a keyed message's stream.
    source = models.CharField(max_length=255, blank=True, default="")
    key = models.CharField("ordering key", max_length=255, null=True, blank=True)
    #: The producer's counter incarnation (``sequenceepoch``; 0 when the producer sends none).
    epoch = models.BigIntegerField(null=True, blank=True)
    sequence = models.BigIntegerField(null=True, blank=True)
    #: On a void announcement: the id of the message whose sequence the producer gave up on.
    voids = models.CharField(max_length=200, null=True, blank=True)
    payload = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    headers = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    raw_body = models.BinaryField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DONE)
    attempts = models.PositiveIntegerField(default=1)
    #: How often the broker had delivered the message before the delivery stored here (a
    #: quorum queue's ``x-acquired-count`` or ``x-delivery-count``); None when the broker sent
    #: no count (a classic queue, or RabbitMQ 3.x's first delivery).
    #: A plain integer: a CHECK (as on a positive field) would scan the table when added.
    delivery_count = models.IntegerField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")

    objects = InboxMessageQuerySet.as_manager()

    class Meta:
        db_table = "inbox_message"
        ordering = ["-received_at"]
        verbose_name = "inbox message"
        permissions = [
            ("replay_inboxmessage", "Can replay inbox messages"),
            ("purge_inboxmessage", "Can purge inbox messages"),
        ]
        constraints = [
            # The dedup. Message id first, so that operators' search by id uses it too.
            models.UniqueConstraint(
                fields=["message_id", "consumer"], name="inbox_message_consumer_uniq"
            ),
        ]
        indexes = [
            # The retry sweeper: only open rows, however many processed ones exist.
            models.Index(
                fields=["next_attempt_at"],
                name="inbox_open_idx",
                condition=models.Q(status__in=OPEN),
            ),
            # The sweep's failed rows due, per consumer of this service, oldest due first.
            models.Index(
                fields=["consumer", "next_attempt_at"],
                name="inbox_failed_due_idx",
                condition=models.Q(status=Status.FAILED),
            ),
            models.Index(
                fields=["consumer", "source", "topic", "key", "epoch", "sequence"],
                name="inbox_waiting_stream_idx",
                condition=models.Q(status=Status.WAITING),
            ),
            # The admin's list, date hierarchy and filters, and the purge by age.
            models.Index(fields=["received_at"], name="inbox_received_idx"),
            models.Index(fields=["status", "received_at"], name="inbox_status_received_idx"),
            models.Index(fields=["consumer", "received_at"], name="inbox_consumer_received_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.consumer} {self.message_id}"


class KeyProgress(models.Model):
    """The last position a consumer settled per stream (source, topic, key).

    Locked ``FOR UPDATE`` while a keyed message is handled, so that workers handle
    one stream's messages one at a time and in sequence order (see ``inbox.ordering``).
    """

    consumer = models.CharField(max_length=200)
    source = models.CharField(max_length=255, default="")
    topic = models.CharField(max_length=255)
    key = models.CharField(max_length=255)
    epoch = models.BigIntegerField(default=0)
    last_sequence = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "inbox_key_progress"
        verbose_name = "key progress"
        verbose_name_plural = "key progress"
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "source", "topic", "key"], name="inbox_stream_progress_uniq"
            ),
        ]
        indexes = [
            # The retention job: idle progress rows, oldest first.
            models.Index(fields=["updated_at"], name="inbox_progress_updated_idx"),
        ]

    def __str__(self) -> str:
        return (
            f"{self.consumer} {self.source}:{self.topic}/{self.key}"
            f"@{self.epoch}.{self.last_sequence}"
        )


class QueueBinding(models.Model):
    """A topic the service's queue was bound to when a worker declared it.

    The broker's bindings cannot be listed over AMQP, so the worker remembers here what it
    bound; ``inbox_topology --prune`` unbinds the topics that no handler declares any more
    (else their messages keep arriving, to be rejected as having no handler).
    """

    queue = models.CharField(max_length=255)
    topic = models.CharField(max_length=255)
    declared_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "inbox_queue_binding"
        verbose_name = "queue binding"
        constraints = [
            models.UniqueConstraint(fields=["queue", "topic"], name="inbox_queue_binding_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.queue} <- {self.topic}"
