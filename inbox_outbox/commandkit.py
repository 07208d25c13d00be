"""Arguments and validation shared by the replay, purge and status commands of both apps."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from typing import Any

from django.core.management.base import CommandError
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import health


def add_selection_arguments(parser: Any, *, consumer: bool) -> None:
    parser.add_argument(
        "--id",
        dest="ids",
        action="append",
        default=[],
        metavar="ID",
        help="A message id (repeatable).",
    )
    parser.add_argument("--status", help="Comma-separated statuses.")
    parser.add_argument("--topic", help="Only this topic.")
    if consumer:
        parser.add_argument("--consumer", help="Only this consumer (<service>:<handler name>).")
    parser.add_argument("--since", help="Only messages from this time on (ISO 8601).")
    parser.add_argument("--until", help="Only messages before this time (ISO 8601).")
    parser.add_argument(
        "--dry-run", action="store_true", help="Show what would happen; change nothing."
    )


def statuses(value: str | None, allowed: Iterable[str]) -> list[str] | None:
    if value is None:
        return None
    allowed = list(allowed)
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if not chosen or unknown:
        raise CommandError(
            f"--status takes a comma-separated list of {', '.join(allowed)}; got {value!r}."
        )
    return chosen


def moment(value: str | None, option: str) -> dt.datetime | None:
    """``value`` as an aware datetime (an ISO 8601 date or date-time), or a CommandError."""
    if value is None:
        return None
    wrong = CommandError(
        f"{option} must be an ISO 8601 date or date-time such as 2026-01-31 or "
        f"2026-01-31T12:00:00+00:00, got {value!r}."
    )
    try:
        # parse_datetime raises ValueError for a well-formed impossible time (2026-02-30T10:00).
        parsed = parse_datetime(value)
        if parsed is None:
            parsed = dt.datetime.combine(dt.date.fromisoformat(value), dt.time())
        return timezone.make_aware(parsed) if timezone.is_naive(parsed) else parsed
    except (ValueError, OverflowError):
        raise wrong from None


def select(
    queryset: QuerySet[Any],
    options: dict[str, Any],
    *,
    id_field: str,
    time_field: str,
    allowed_statuses: Iterable[str],
    require_selection: bool = True,
) -> QuerySet[Any]:
    """Apply the selection options; refuse an empty selection where it would mean "all"."""
    chosen = statuses(options.get("status"), allowed_statuses)
    since, until = moment(options.get("since"), "--since"), moment(options.get("until"), "--until")
    if since and until and since >= until:
        raise CommandError("--since must be earlier than --until.")
    picked = [
        options.get("ids"),
        chosen,
        options.get("topic"),
        options.get("consumer"),
        since,
        until,
    ]
    if require_selection and not any(picked):
        raise CommandError(
            "Say which messages: give --id, --status, --topic"
            f"{', --consumer' if 'consumer' in options else ''}, --since or --until."
        )
    if options.get("ids"):
        try:
            queryset = queryset.filter(**{f"{id_field}__in": options["ids"]})
        except Exception as exc:  # a malformed UUID for the outbox
            raise CommandError(f"--id: {exc}") from exc
    if chosen:
        queryset = queryset.filter(status__in=chosen)
    if options.get("topic"):
        queryset = queryset.filter(topic=options["topic"])
    if options.get("consumer"):
        queryset = queryset.filter(consumer=options["consumer"])
    if since:
        queryset = queryset.filter(**{f"{time_field}__gte": since})
    if until:
        queryset = queryset.filter(**{f"{time_field}__lt": until})
    return queryset


#: Purge bounds: past 100 years a cutoff is a typo; a batch is one DELETE ... WHERE pk IN (...).
MAX_AGE_DAYS = 36_600
MAX_BATCH_SIZE = 100_000


def add_purge_arguments(parser: Any) -> None:
    parser.add_argument(
        "--older-than-days", type=float, required=True, help="Only rows older than this many days."
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        help=f"Rows deleted per transaction (1 to {MAX_BATCH_SIZE}).",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="Count what would go; delete nothing."
    )


def check_purge_arguments(options: dict[str, Any]) -> dt.timedelta:
    """Validate ``--older-than-days`` and ``--batch-size``; return the age: the cutoff is
    that long before the database's clock (``Now() - age``), not the command host's."""
    days = options["older_than_days"]
    if days < 0:
        raise CommandError(f"--older-than-days must not be negative, got {days!r}.")
    if not math.isfinite(days) or days > MAX_AGE_DAYS:
        raise CommandError(
            f"--older-than-days must be a finite number of days up to {MAX_AGE_DAYS}, got {days!r}."
        )
    if not 1 <= options["batch_size"] <= MAX_BATCH_SIZE:
        raise CommandError(
            f"--batch-size must be a positive integer up to {MAX_BATCH_SIZE}, "
            f"got {options['batch_size']!r}."
        )
    return dt.timedelta(days=days)


def write_status(
    command: Any, report: dict[str, Any], *, as_json: bool, groups: tuple[str, ...]
) -> None:
    if as_json:
        command.stdout.write(json.dumps(report, indent=2, sort_keys=True))
        return
    counts = "  ".join(f"{k}={v}" for k, v in report["counts"].items())
    command.stdout.write(f"counts: {counts}")
    for key, value in report.items():
        if key not in ("counts", *groups):
            command.stdout.write(f"{key.replace('_', ' ')}: {value}")
    for group in groups:
        command.stdout.write(f"per {group[:-1]}:")
        for name, per_status in sorted(report[group].items()):
            command.stdout.write(
                f"  {name}: " + "  ".join(f"{k}={v}" for k, v in sorted(per_status.items()))
            )


#: ``--check`` thresholds: the option, the gauge it bounds (summed over its labels), and help.
Threshold = tuple[str, str, str]


def add_check_arguments(parser: Any, thresholds: Iterable[Threshold]) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="Exit with status 2 when a threshold below is crossed (for cron and monitoring); "
        "the numbers are the metrics' gauges.",
    )
    for option, _, text in thresholds:
        parser.add_argument(option, type=float, default=None, metavar="N", help=text)
    parser.add_argument(
        "--max-health-age",
        type=float,
        default=None,
        metavar="SECONDS",
        help="Oldest HEALTH_FILE allowed, in seconds: the relay or worker on this host that "
        "touches it stopped being ready (or stopped).",
    )


def check_thresholds(
    command: Any, readings: Iterable[Any], thresholds: Iterable[Threshold], options: dict[str, Any]
) -> None:
    """Compare the gauges with the limits given; print each; raise when one is crossed."""
    totals: dict[str, float] = {}
    for reading in readings:
        totals[reading.name] = totals.get(reading.name, 0.0) + reading.value
    crossed = []
    for option, gauge, _ in thresholds:
        limit = options.get(option.lstrip("-").replace("-", "_"))
        if limit is None:
            continue
        value = totals.get(gauge, 0.0)
        over = value > limit
        command.stdout.write(
            f"{'CROSSED' if over else 'ok':8} {gauge} = {value:g} (limit {limit:g})"
        )
        if over:
            crossed.append(f"{gauge} {value:g} > {limit:g}")
    limit = options.get("max_health_age")
    if limit is not None:
        age = health.file_age_seconds()
        if age is None:
            raise CommandError("--max-health-age needs HEALTH_FILE set", returncode=1)
        over = age > limit
        shown = "missing" if math.isinf(age) else f"{age:.0f}"
        command.stdout.write(
            f"{'CROSSED' if over else 'ok':8} health_file_age_seconds = {shown} (limit {limit:g})"
        )
        if over:
            crossed.append(f"health_file_age_seconds {shown} > {limit:g}")
    if crossed:
        raise CommandError("threshold crossed: " + "; ".join(crossed), returncode=2)
