"""Outbox rows: one per message, written in the publisher's transaction."""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from uuid6 import uuid7

from inbox_outbox.lookups import AnyOf

#: Statuses a relay may still pick up; the partial indexes below cover exactly these.
UNSENT = ("pending", "failed")
#: Not sent yet and still to be: the unsent ones and those waiting for their due time.
OUTSTANDING = ("scheduled", *UNSENT)


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    FAILED = "failed", "Failed (will retry)"
    SENT = "sent", "Sent"
    DEAD = "dead", "Dead"
    EXPIRED = "expired", "Expired"
    SCHEDULED = "scheduled", "Scheduled (not due yet)"
    CANCELLED = "cancelled", "Cancelled"


class MessageQuerySet(models.QuerySet["OutboxMessage"]):
    def unsent(self) -> MessageQuerySet:
        return self.filter(status__in=UNSENT)

    def pending(self) -> MessageQuerySet:
        return self.filter(status=Status.PENDING)

    def failed(self) -> MessageQuerySet:
        return self.filter(status=Status.FAILED)

    def sent(self) -> MessageQuerySet:
        return self.filter(status=Status.SENT)

    def dead(self) -> MessageQuerySet:
        return self.filter(status=Status.DEAD)

    def scheduled(self) -> MessageQuerySet:
        return self.filter(status=Status.SCHEDULED)


class OutboxMessage(models.Model):
    """A message waiting for, or done with, the relay.

    ``id`` is a UUIDv7 assigned by ``publish()``: time-ordered so the primary key
    index stays compact, and never changed, so every re-send carries the same id.
    """

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    topic = models.CharField(max_length=255)
    key = models.CharField(
        "ordering key",
        max_length=255,
        null=True,
        blank=True,
        help_text="Messages of one topic sharing a key are published and handled in commit order.",
    )
    sequence = models.BigIntegerField(
        null=True, blank=True, help_text="Per (topic, key) sequence, 1, 2, 3… in commit order."
    )
    epoch = models.BigIntegerField(
        null=True, blank=True, help_text="The incarnation of the (topic, key) counter it came from."
    )
    voids = models.UUIDField(
        null=True,
        blank=True,
        help_text="A void announcement: the keyed message whose sequence will never be sent.",
    )
    payload = models.JSONField(encoder=DjangoJSONEncoder)
    headers = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    dedup_key = models.CharField(
        "de-duplication key",
        max_length=255,
        null=True,
        blank=True,
        help_text="Producer-side de-duplication: a second publish with this key is a no-op.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    available_at = models.DateTimeField(
        "next attempt",
        default=timezone.now,
        help_text="When the relay may send it next; for a scheduled message, its due time.",
    )
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    objects = MessageQuerySet.as_manager()

    class Meta:
        db_table = "outbox_message"
        ordering = ["-created_at"]
        verbose_name = "outbox message"
        permissions = [
            ("replay_message", "Can replay outbox messages"),
            ("purge_message", "Can purge outbox messages"),
        ]
        constraints = [
            # Partial: the many messages without a dedup key cost no index entry.
            models.UniqueConstraint(
                fields=["dedup_key"],
                condition=models.Q(dedup_key__isnull=False),
                name="outbox_dedup_key_uniq",
            ),
        ]
        indexes = [
            # The relay's claim of keyless rows, longest due first: rows in backoff lie past
            # the range it scans, and sent rows are not in it at all.
            models.Index(
                fields=["available_at", "id"],
                name="outbox_unsent_keyless_idx",
                condition=models.Q(status__in=UNSENT) & models.Q(key__isnull=True),
            ),
            # Each key's unsent rows in order, the head first: the claim's walk jumps from
            # one key to the next in one descent, past however many rows wait behind a head.
            models.Index(
                F("topic"),
                F("key"),
                Coalesce(F("epoch"), Value(0), output_field=models.BigIntegerField()),
                F("sequence"),
                name="outbox_unsent_key_idx",
                condition=models.Q(status__in=UNSENT) & models.Q(key__isnull=False),
            ),
            # The relay's promotion of scheduled rows that fell due, the earliest first, and
            # outbox_status's next due time: the rows scheduled for later lie past the range.
            models.Index(
                fields=["available_at", "id"],
                name="outbox_scheduled_due_idx",
                condition=models.Q(status="scheduled"),
            ),
            # Whether a key has a scheduled message ahead of its head (the claim's walk asks
            # it of each key it visits): one probe, however many rows are scheduled.
            models.Index(
                F("topic"),
                F("key"),
                Coalesce(F("epoch"), Value(0), output_field=models.BigIntegerField()),
                F("sequence"),
                name="outbox_scheduled_key_idx",
                condition=models.Q(status="scheduled") & models.Q(key__isnull=False),
            ),
            # The admin's list, date hierarchy, filters and the purge by age.
            models.Index(fields=["created_at"], name="outbox_created_idx"),
            models.Index(fields=["status", "created_at"], name="outbox_status_created_idx"),
            models.Index(fields=["topic", "created_at"], name="outbox_topic_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.id}"


OutboxMessage._meta.get_field("id").register_lookup(AnyOf)


class Sequence(models.Model):
    """The last sequence number handed out per (topic, key), in one epoch.

    Publishing a keyed message increments this row, which row-locks it until the
    publisher commits: same-key publishers serialize, so sequence order is commit order.
    A row created afresh (first use, after the retention job purged it idle, or after
    ``outbox_new_epoch``) starts a new epoch, its creation time on the database's clock
    in microseconds, so consumers take its 1, 2, 3… for a restart, not for old numbers.
    """

    topic = models.CharField(max_length=255)
    key = models.CharField(max_length=255)
    last = models.BigIntegerField(default=0)
    epoch = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "outbox_sequence"
        constraints = [
            models.UniqueConstraint(fields=["topic", "key"], name="outbox_sequence_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.topic}/{self.key}@{self.epoch}.{self.last}"
