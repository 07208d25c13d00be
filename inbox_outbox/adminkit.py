"""Admin pieces both apps use: counts that stay cheap on tables of millions of rows, distinct
values by index skip-scan, pretty JSON, read-only views, action reports.

Pure helpers with no models of their own: each app's admin builds on them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.models import Max, Min, Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.text import capfirst

#: Counts stop here: "10,000+" is as useful to an operator as the exact figure.
COUNT_CAP = 10_000

M = TypeVar("M", bound=Model)
#: The periods the admin's date hierarchy asks for (Django's ``datetimes()`` takes more).
Period = Literal["year", "month", "week", "day", "hour", "minute", "second"]
_PROBED = ("year", "month", "day")

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin as ModelAdmin

    _Paginator = Paginator[Model]
else:
    _Paginator = Paginator

    class ModelAdmin(admin.ModelAdmin, Generic[M]):
        """``admin.ModelAdmin`` that also takes its model as a type argument at run time:
        django-stubs declares it generic, Django's class is not subscriptable."""


def capped_count(queryset: QuerySet[Model]) -> int:
    """``min(count, COUNT_CAP + 1)``, reading at most that many index entries."""
    return queryset.order_by()[: COUNT_CAP + 1].count()


def show_count(count: int) -> str:
    return f"{COUNT_CAP:,}+" if count > COUNT_CAP else f"{count:,}"


def estimated_rows(model: type[Model], using: str) -> int | None:
    """PostgreSQL's estimate of a table's rows (kept by ANALYZE/autovacuum), else None."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
            [model._meta.db_table],
        )
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] >= 0 else None


class CappedCountPaginator(_Paginator):
    """Never counts a whole big table: an unfiltered list uses PostgreSQL's estimate, a
    filtered one counts up to ``COUNT_CAP`` rows."""

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if isinstance(queryset, QuerySet):
            if not queryset.query.where:
                estimate = estimated_rows(queryset.model, queryset.db)
                if estimate is not None and estimate > COUNT_CAP:
                    return estimate
            return capped_count(queryset)
        return super().count


def distinct_values(queryset: QuerySet[Model], column: str, limit: int = 200) -> list[str]:
    """Distinct values of an indexed column: on PostgreSQL one index probe per value
    (a recursive "skip scan") instead of reading every row."""
    model = queryset.model
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return list(queryset.order_by(column).values_list(column, flat=True).distinct()[:limit])
    table, col = model._meta.db_table, connection.ops.quote_name(column)
    sql = (
        f"WITH RECURSIVE v AS ((SELECT {col} AS x FROM {table} ORDER BY {col} LIMIT 1) "
        f"UNION ALL SELECT (SELECT {col} FROM {table} WHERE {col} > v.x ORDER BY {col} LIMIT 1) "
        f"FROM v WHERE v.x IS NOT NULL) SELECT x FROM v WHERE x IS NOT NULL LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]


class PeriodProbingQuerySet(QuerySet[M]):
    """For the admin's date hierarchy: ``datetimes()`` without reading every row.

    Django's version is ``SELECT DISTINCT date_trunc(…)`` over the whole (filtered) table;
    this one walks the date index: from the first value, it looks up the first value after
    each period, one index probe per period that has rows.

    Both methods return lists, not querysets: the admin only iterates them.
    """

    def datetimes(  # type: ignore[override]  # a list where Django returns a QuerySet (see above)
        self,
        field_name: str,
        kind: Period,
        order: Literal["ASC", "DESC"] = "ASC",
        tzinfo: dt.tzinfo | None = None,
    ) -> list[dt.datetime]:
        if kind not in _PROBED:
            return list(super().datetimes(field_name, kind, order, tzinfo))
        span = self.aggregate(first=Min(field_name), last=Max(field_name))
        if span["first"] is None:
            return []
        zone = tzinfo or timezone.get_current_timezone()
        last = timezone.localtime(span["last"], zone)
        found: list[dt.datetime] = []
        moment: dt.datetime | None = span["first"]
        while moment is not None:
            start = _period_start(timezone.localtime(moment, zone), kind)
            found.append(start)
            # The first row after this period, by index: empty periods are skipped over.
            moment = (
                self.filter(**{f"{field_name}__gte": _next_period(start, kind)})
                .order_by(field_name)
                .values_list(field_name, flat=True)
                .first()
            )
            if moment is not None and moment > last:
                break
        return found if order == "ASC" else found[::-1]

    def dates(  # type: ignore[override]  # a list where Django returns a QuerySet (see above)
        self,
        field_name: str,
        kind: Literal["year", "month", "week", "day"],
        order: Literal["ASC", "DESC"] = "ASC",
    ) -> list[dt.date]:
        return [d.date() for d in self.datetimes(field_name, kind, order)]


def _period_start(moment: dt.datetime, kind: str) -> dt.datetime:
    moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind in ("month", "year"):
        moment = moment.replace(day=1)
    if kind == "year":
        moment = moment.replace(month=1)
    return moment


def _next_period(start: dt.datetime, kind: str) -> dt.datetime:
    if kind == "day":
        following = start.replace(tzinfo=None) + dt.timedelta(days=1)
    elif kind == "month":
        following = start.replace(
            tzinfo=None, year=start.year + start.month // 12, month=start.month % 12 + 1
        )
    else:
        following = start.replace(tzinfo=None, year=start.year + 1)
    return timezone.make_aware(following, start.tzinfo)


def for_admin(queryset: QuerySet[M]) -> QuerySet[M]:
    """A copy of ``queryset`` as a :class:`PeriodProbingQuerySet` (its methods otherwise
    unchanged, its database routing and hints kept)."""
    probing = type(f"Probing{type(queryset).__name__}", (PeriodProbingQuerySet, type(queryset)), {})
    copy = queryset.all()
    copy.__class__ = probing
    return copy


def search_exact(queryset: QuerySet[M], term: str, fields: tuple[str, ...]) -> QuerySet[M]:
    """Rows whose first matching field (in order) equals ``term``: each field is queried on
    its own so that its index is used; an ``OR`` of them would read the whole table."""
    for field in fields:
        hits = queryset.filter(**{field: term})
        if hits.exists():
            return hits
    return queryset.none()


def pretty_json(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder)
    return format_html('<pre class="inbox-outbox-json">{}</pre>', text)


def pre(text: str) -> str:
    return format_html("<pre>{}</pre>", text) if text else "-"


class ReadOnlyMixin:
    """Nobody edits a message by hand: views only, changes go through the actions."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


def report(
    modeladmin: ModelAdmin[M],
    request: HttpRequest,
    verb: str,
    done: int,
    skipped: int,
    why: str,
) -> None:
    """Tell the operator what an action did and what it skipped, with plurals."""
    name, plural = modeladmin.model._meta.verbose_name, modeladmin.model._meta.verbose_name_plural
    text = f"{capfirst(verb)} {done} {name if done == 1 else plural}."
    if skipped:
        text += f" Skipped {skipped} {name if skipped == 1 else plural} {why}."
    modeladmin.message_user(
        request, text, messages.SUCCESS if done or not skipped else messages.WARNING
    )


class StoredMessage(Protocol):
    """What the shared admin reads of an outbox or inbox row."""

    @property
    def payload(self) -> Any: ...
    @property
    def headers(self) -> Any: ...
    @property
    def last_error(self) -> str: ...


class StatusChoice(Protocol):
    """A member of a model's ``Status`` choices."""

    @property
    def label(self) -> str: ...
    @property
    def value(self) -> str: ...


class MessageAdminBase(ReadOnlyMixin, ModelAdmin[M]):
    """What both apps' message admins share: no full count on any page, exact indexed
    search, counts per status above the list, pretty JSON, and the replay and purge
    actions behind the model's own ``replay_…`` and ``purge_…`` permissions.

    Subclasses set ``status_enum``, the two permission codenames, and the actions
    ``replay``, ``mark_dead``, ``purge``.
    """

    status_enum: Iterable[StatusChoice]
    replay_codename: str
    purge_codename: str
    paginator = CappedCountPaginator
    show_full_result_count = False
    if hasattr(admin, "ShowFacets"):  # Django 5.0+
        show_facets = admin.ShowFacets.NEVER  # counts scan
    list_per_page = 50
    actions: tuple[str, ...] = ("replay", "mark_dead", "purge")

    @admin.display(description="payload")
    def payload_json(self, obj: StoredMessage) -> str:
        return pretty_json(obj.payload)

    @admin.display(description="headers")
    def headers_json(self, obj: StoredMessage) -> str:
        return pretty_json(obj.headers)

    @admin.display(description="last error")
    def error(self, obj: StoredMessage) -> str:
        return pre(obj.last_error)

    def get_queryset(self, request: HttpRequest) -> QuerySet[M]:
        return for_admin(super().get_queryset(request))

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        every = self.model._default_manager.all()
        counts = [
            (s.label, s.value, show_count(capped_count(every.filter(status=s))))
            for s in self.status_enum
        ]
        return super().changelist_view(request, {**(extra_context or {}), "status_counts": counts})

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{self.replay_codename}")

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{self.purge_codename}")
