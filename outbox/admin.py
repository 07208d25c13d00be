"""The outbox in the Django admin: read-only, fast on large tables, with operator actions."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from . import operations
from .adminkit import (
    CappedCountPaginator,
    ReadOnlyMixin,
    capped_count,
    distinct_values,
    for_admin,
    pre,
    pretty_json,
    report,
    search_exact,
    show_count,
)
from .models import Message, Status


class TopicFilter(admin.SimpleListFilter):
    title = "topic"
    parameter_name = "topic"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(t, t) for t in distinct_values(Message.objects.all(), "topic")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> QuerySet[Message]:
        return queryset.filter(topic=self.value()) if self.value() else queryset


@admin.register(Message)
class MessageAdmin(ReadOnlyMixin, admin.ModelAdmin):
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
    )
    list_filter = ("status", TopicFilter)
    date_hierarchy = "created_at"
    search_fields = ("id", "key", "topic")
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = getattr(admin, "ShowFacets", None) and admin.ShowFacets.NEVER  # counts scan
    list_per_page = 50
    change_list_template = "admin/outbox/message/change_list.html"
    actions = ("replay", "mark_dead", "purge")
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

    @admin.display(description="payload")
    def payload_json(self, obj: Message) -> str:
        return pretty_json(obj.payload)

    @admin.display(description="headers")
    def headers_json(self, obj: Message) -> str:
        return pretty_json(obj.headers)

    @admin.display(description="last error")
    def error(self, obj: Message) -> str:
        return pre(obj.last_error)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Message], search_term: str
    ) -> tuple[QuerySet[Message], bool]:
        """Exact matches only (indexed): a message id, an ordering key or a topic."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(id=uuid.UUID(term)), False
        except ValueError:
            return search_exact(queryset, term, ("key", "topic")), False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        return for_admin(super().get_queryset(request))

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        counts = [
            (s.label, s.value, show_count(capped_count(Message.objects.filter(status=s))))
            for s in Status
        ]
        return super().changelist_view(request, {**(extra_context or {}), "status_counts": counts})

    # -- actions (each needs its own permission) ------------------------------------
    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("outbox.replay_message")

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("outbox.purge_message")

    @admin.action(description="Replay: publish again with the same id", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        outcome = operations.replay(queryset)
        report(
            self,
            request,
            "queued for publishing",
            outcome.done,
            outcome.skipped,
            "that were still pending",
        )

    @admin.action(description="Mark dead: stop trying to publish", permissions=["replay"])
    def mark_dead(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        outcome = operations.mark_dead(queryset)
        report(
            self,
            request,
            "marked dead",
            outcome.done,
            outcome.skipped,
            "that were already sent, dead or expired",
        )

    @admin.action(description="Purge: delete sent and expired messages", permissions=["purge"])
    def purge(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
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
