"""The outbox in the Django admin: read-only, fast on large tables, with operator actions."""

from __future__ import annotations

import datetime as dt
import uuid

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest

from inbox_outbox import adminkit
from inbox_outbox.adminkit import ModelAdmin, distinct_values, report, search_exact

from . import operations
from .exceptions import ReplayRefused
from .models import OutboxMessage, Status


class TopicFilter(admin.SimpleListFilter):
    title = "topic"
    parameter_name = "topic"

    def lookups(
        self, request: HttpRequest, model_admin: ModelAdmin[OutboxMessage]
    ) -> list[tuple[str, str]]:
        return [(t, t) for t in distinct_values(OutboxMessage.objects.all(), "topic")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> QuerySet[OutboxMessage]:
        return queryset.filter(topic=self.value()) if self.value() else queryset


class DueFilter(admin.SimpleListFilter):
    """Scheduled messages by when they fall due, on the database's clock."""

    title = "scheduled"
    parameter_name = "due"

    def lookups(
        self, request: HttpRequest, model_admin: ModelAdmin[OutboxMessage]
    ) -> list[tuple[str, str]]:
        return [
            ("overdue", "due, not yet promoted"),
            ("hour", "due within an hour"),
            ("later", "due later"),
        ]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage]
    ) -> QuerySet[OutboxMessage]:
        scheduled = queryset.filter(status=Status.SCHEDULED)
        hour = Now() + dt.timedelta(hours=1)
        if self.value() == "overdue":
            return scheduled.filter(available_at__lte=Now())
        if self.value() == "hour":
            return scheduled.filter(available_at__gt=Now(), available_at__lte=hour)
        if self.value() == "later":
            return scheduled.filter(available_at__gt=hour)
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(adminkit.MessageAdminBase[OutboxMessage]):
    actions = ("replay", "replay_anyway", "mark_dead", "purge")
    list_display = (
        "id",
        "topic",
        "key",
        "sequence",
        "status",
        "attempts",
        "created_at",
        "sent_at",
        "available_at",
        "due",
    )
    list_filter = ("status", DueFilter, TopicFilter)
    date_hierarchy = "created_at"
    search_fields = ("id", "key", "topic")
    status_enum = Status
    # The codenames kept their names when the model became OutboxMessage.
    replay_codename, purge_codename = "replay_message", "purge_message"
    change_list_template = "admin/outbox/outboxmessage/change_list.html"
    fields = (
        "id",
        "topic",
        "key",
        "sequence",
        "status",
        "attempts",
        "created_at",
        "available_at",
        "sent_at",
        "expires_at",
        "lease_owner",
        "lease_until",
        "dedup_key",
        "payload_json",
        "headers_json",
        "error",
    )
    readonly_fields = fields

    @admin.display(description="due", ordering="available_at")
    def due(self, message: OutboxMessage) -> dt.datetime | None:
        """When a scheduled message falls due (its next attempt, until then)."""
        return message.available_at if message.status == Status.SCHEDULED else None

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage], search_term: str
    ) -> tuple[QuerySet[OutboxMessage], bool]:
        """Exact matches only (indexed): a message id, an ordering key or a topic."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(id=uuid.UUID(term)), False
        except ValueError:
            return search_exact(queryset, term, ("key", "topic")), False

    # -- actions (each needs its own permission) ------------------------------------
    @admin.action(description="Replay: publish again with the same id", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        self._replay(request, queryset, anyway=False)

    @admin.action(
        description="Replay anyway: also sent before the dedup window or expired "
        "(consumers handle them again)",
        permissions=["replay"],
    )
    def replay_anyway(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        self._replay(request, queryset, anyway=True)

    def _replay(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage], *, anyway: bool
    ) -> None:
        try:
            outcome = operations.replay(queryset, past_dedup_window=anyway, clear_expiry=anyway)
        except ReplayRefused as refused:
            self.message_user(
                request, f"{refused} Or use the action “Replay anyway”.", messages.ERROR
            )
            return
        report(
            self,
            request,
            "queued for publishing",
            outcome.done,
            outcome.skipped,
            "that were still pending or scheduled, are being sent right now, or were "
            "cancelled (publish those again)",
        )

    @admin.action(description="Mark dead: stop trying to publish", permissions=["replay"])
    def mark_dead(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        outcome = operations.mark_dead(queryset)
        report(
            self,
            request,
            "marked dead",
            outcome.done,
            outcome.skipped,
            "that were already sent, dead or expired, or are being sent right now",
        )

    @admin.action(description="Purge: delete sent and expired messages", permissions=["purge"])
    def purge(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        total = queryset.count()
        outcome = operations.purge(queryset)
        report(
            self,
            request,
            "purged",
            outcome.done,
            total - outcome.done,
            "that may still be published or are dead (purge those from the command line)",
        )
