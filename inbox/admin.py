"""The inbox in the Django admin: read-only, fast on large tables, with operator actions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from inbox_outbox import adminkit
from inbox_outbox.adminkit import (
    CappedCountPaginator,
    ModelAdmin,
    ReadOnlyMixin,
    distinct_values,
    pre,
    report,
    search_exact,
)

from . import operations, topology
from .models import InboxMessage, KeyProgress, Status
from .registry import registry


class ConsumerFilter(admin.SimpleListFilter):
    title = "consumer"
    parameter_name = "consumer"

    def lookups(
        self, request: HttpRequest, model_admin: ModelAdmin[InboxMessage]
    ) -> list[tuple[str, str]]:
        return [(c, c) for c in distinct_values(InboxMessage.objects.all(), "consumer")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[InboxMessage]
    ) -> QuerySet[InboxMessage]:
        return queryset.filter(consumer=self.value()) if self.value() else queryset


class TopicFilter(admin.SimpleListFilter):
    """The topics this service's handlers consume (known without a query)."""

    title = "topic"
    parameter_name = "topic"

    def lookups(
        self, request: HttpRequest, model_admin: ModelAdmin[InboxMessage]
    ) -> list[tuple[str, str]]:
        return [(t, t) for t in sorted(registry.topics())]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[InboxMessage]
    ) -> QuerySet[InboxMessage]:
        return queryset.filter(topic=self.value()) if self.value() else queryset


@admin.register(InboxMessage)
class InboxMessageAdmin(adminkit.MessageAdminBase[InboxMessage]):
    list_display = (
        "message_id",
        "consumer",
        "topic",
        "key",
        "sequence",
        "status",
        "attempts",
        "delivery_count",
        "received_at",
        "processed_at",
        "next_attempt_at",
    )
    list_filter = ("status", ConsumerFilter, TopicFilter)
    date_hierarchy = "received_at"
    search_fields = ("message_id", "key", "topic")
    status_enum = Status
    replay_codename, purge_codename = "replay_inboxmessage", "purge_inboxmessage"
    change_list_template = "admin/inbox/inboxmessage/change_list.html"
    fields = (
        "message_id",
        "consumer",
        "topic",
        "key",
        "sequence",
        "status",
        "attempts",
        "received_at",
        "processed_at",
        "next_attempt_at",
        "payload_json",
        "headers_json",
        "error",
        "traceback_text",
        "raw",
    )
    readonly_fields = fields

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra = {"dead_letters": topology.dead_letters_shown()}
        return super().changelist_view(request, {**(extra_context or {}), **extra})

    @admin.display(description="traceback")
    def traceback_text(self, obj: InboxMessage) -> str:
        return pre(obj.traceback)

    @admin.display(description="raw body (kept for failed, dead and rejected messages)")
    def raw(self, obj: InboxMessage) -> str:
        return pre(bytes(obj.raw_body).decode("utf-8", "replace")) if obj.raw_body else "-"

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[InboxMessage], search_term: str
    ) -> tuple[QuerySet[InboxMessage], bool]:
        """Exact matches only (indexed): a message id, an ordering key or a topic."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return search_exact(queryset, term, ("message_id", "key", "topic")), False

    # -- actions (each needs its own permission) ------------------------------------
    @admin.action(
        description="Replay: handle failed or dead messages again now", permissions=["replay"]
    )
    def replay(self, request: HttpRequest, queryset: QuerySet[InboxMessage]) -> None:
        outcome = operations.replay(queryset)
        report(
            self,
            request,
            "replayed",
            outcome.done,
            outcome.skipped,
            "that were processed, waiting or rejected",
        )
        if outcome.failed_again:
            self.message_user(
                request,
                f"{outcome.failed_again} of them failed again; see their errors.",
                level="warning",
            )
        if outcome.deferred:
            self.message_user(
                request,
                f"{outcome.deferred} of them run with the retry sweep: a request runs at most "
                f"{operations.RUN_NOW} handlers.",
                level="info",
            )

    @admin.action(description="Mark dead: stop retrying", permissions=["replay"])
    def mark_dead(self, request: HttpRequest, queryset: QuerySet[InboxMessage]) -> None:
        outcome = operations.mark_dead(queryset)
        report(
            self,
            request,
            "marked dead",
            outcome.done,
            outcome.skipped,
            "that were not waiting or failed",
        )

    @admin.action(
        description="Purge: delete processed and rejected messages", permissions=["purge"]
    )
    def purge(self, request: HttpRequest, queryset: QuerySet[InboxMessage]) -> None:
        total = queryset.count()
        outcome = operations.purge(queryset)
        report(
            self,
            request,
            "purged",
            outcome.done,
            total - outcome.done,
            "that are open, dead or stale, or processed inside the dedup window",
        )


@admin.register(KeyProgress)
class KeyProgressAdmin(ReadOnlyMixin, ModelAdmin[KeyProgress]):
    list_display = ("consumer", "source", "topic", "key", "epoch", "last_sequence", "updated_at")
    search_fields = ("key",)
    paginator = CappedCountPaginator
    show_full_result_count = False
