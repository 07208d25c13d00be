"""The metrics' gauge queries against big tables: each must answer in under 50 ms.

    .venv/bin/python bench/gauges.py [--rows 10000000] [--rounds 20]

Fills ``outbox_message`` with ``--rows`` sent rows plus a backlog (5,000 pending, 5,000 failed,
1,000 dead over 10 topics) and ``inbox_message`` with ``--rows`` processed rows plus 1,000
waiting rows over 100 streams, 1,000 failed (half due) and 1,000 dead, then times each gauge
source (``outbox.gauges``, ``inbox.gauges``) and each of its queries: median and worst of
``--rounds``. It TRUNCATEs both tables first: point ``DATABASE_URL`` at a database of its own.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _setup import django_setup

_UUID7 = (
    "(lpad(to_hex((extract(epoch from {ts}) * 1000)::bigint), 12, '0') || '7000' || '8' "
    "|| lpad(to_hex({n}), 15, '0'))::uuid"
)
_OUTBOX = (
    "id, topic, key, sequence, epoch, payload, headers, status, attempts, available_at, "
    "lease_owner, created_at, sent_at, last_error"
)
_INBOX = (
    "consumer, message_id, topic, source, key, epoch, sequence, payload, headers, status, "
    "attempts, received_at, processed_at, next_attempt_at, last_error, traceback"
)
CHUNK = 1_000_000


def fill(cursor, rows: int) -> None:  # type: ignore[no-untyped-def]
    cursor.execute("TRUNCATE outbox_message, outbox_sequence, inbox_message")
    ts = "(timestamptz '2026-01-01' + g * interval '1 millisecond')"
    for first in range(1, rows + 1, CHUNK):
        last = min(first + CHUNK - 1, rows)
        cursor.execute(
            f"INSERT INTO outbox_message ({_OUTBOX}) "
            f"SELECT {_UUID7.format(ts=ts, n='g')}, 'bench.t' || mod(g, 10), NULL, NULL, NULL, "
            f"'{{\"n\": 1}}'::jsonb, '{{}}'::jsonb, 'sent', 1, {ts}, '', {ts}, {ts}, '' "
            "FROM generate_series(%s, %s) g",
            [first, last],
        )
        cursor.execute(
            f"INSERT INTO inbox_message ({_INBOX}) "
            "SELECT 'bench:h' || mod(g, 5), 'm' || g, 'bench.t' || mod(g, 10), 'other', NULL, "
            f"NULL, NULL, '{{\"n\": 1}}'::jsonb, '{{}}'::jsonb, 'done', 1, {ts}, {ts}, NULL, '', '' "
            "FROM generate_series(%s, %s) g",
            [first, last],
        )
        print(f"  filled {last:,} rows each", flush=True)
    now = "(now() - g * interval '1 millisecond')"
    base = rows + 1
    for status, count, key in (("pending", 5000, "NULL"), ("failed", 5000, "'k' || mod(g, 100)")):
        cursor.execute(
            f"INSERT INTO outbox_message ({_OUTBOX}) "
            f"SELECT {_UUID7.format(ts=now, n='g')}, 'bench.t' || mod(g, 10), {key}, "
            f"CASE WHEN {key} IS NOT NULL THEN g END, CASE WHEN {key} IS NOT NULL THEN 1 END, "
            f"'{{\"n\": 1}}'::jsonb, '{{}}'::jsonb, '{status}', 0, now(), '', {now}, NULL, '' "
            "FROM generate_series(%s, %s) g",
            [base, base + count - 1],
        )
        base += count
    cursor.execute(
        f"INSERT INTO outbox_message ({_OUTBOX}) "
        f"SELECT {_UUID7.format(ts=now, n='g')}, 'bench.t' || mod(g, 10), NULL, NULL, NULL, "
        f"'{{\"n\": 1}}'::jsonb, '{{}}'::jsonb, 'dead', 12, now(), '', {now}, NULL, 'x' "
        "FROM generate_series(%s, %s) g",
        [base, base + 999],
    )
    for status, key, due in (
        ("waiting", "'k' || mod(g, 100)", "NULL"),
        (
            "failed",
            "NULL",
            "CASE WHEN mod(g, 2) = 0 THEN now() - interval '1 minute' "
            "ELSE now() + interval '1 hour' END",
        ),
        ("dead", "NULL", "NULL"),
    ):
        cursor.execute(
            f"INSERT INTO inbox_message ({_INBOX}) "
            f"SELECT 'bench:h' || mod(g, 5), '{status}' || g, 'bench.t' || mod(g, 10), 'other', "
            f"{key}, CASE WHEN {key} IS NOT NULL THEN 1 END, CASE WHEN {key} IS NOT NULL THEN g END, "
            f"'{{\"n\": 1}}'::jsonb, '{{}}'::jsonb, '{status}', 1, {now}, NULL, {due}, '', '' "
            "FROM generate_series(1, 1000) g"
        )
    cursor.execute("VACUUM ANALYZE outbox_message")
    cursor.execute("VACUUM ANALYZE inbox_message")


def timed(source, rounds: int) -> tuple[float, float, dict[str, float]]:  # type: ignore[no-untyped-def]
    from django.db import connection

    times, values = [], {}
    for _ in range(rounds):
        started = time.perf_counter()
        found = list(source())
        times.append(time.perf_counter() - started)
        for r in found:
            values[r.name] = values.get(r.name, 0) + r.value
    connection.close()  # the next source starts on a fresh connection, as a scrape's thread does
    return statistics.median(times) * 1000, max(times) * 1000, values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--no-fill", action="store_true", help="time the tables as they are")
    args = parser.parse_args()
    django_setup("inbox_outbox_bench_gauges")
    from django.db import connection

    from inbox import gauges as inbox_gauges
    from outbox import gauges as outbox_gauges

    if not args.no_fill:
        with connection.cursor() as cursor:
            fill(cursor, args.rows)
    for name, source in (("outbox", outbox_gauges.readings), ("inbox", inbox_gauges.readings)):
        median, worst, values = timed(source, args.rounds)
        print(
            f"{name} gauges: median {median:.1f} ms, worst {worst:.1f} ms per scrape "
            f"(all of its queries; target < 50 ms each)"
        )
        for gauge, value in sorted(values.items()):
            print(f"  {gauge} = {value / args.rounds:g}")


if __name__ == "__main__":
    main()
