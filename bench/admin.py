"""Admin page times with 1,000,000 rows in each table, against the admin's index page
(a page that touches no message table) measured in the same run.

    .venv/bin/python bench/admin.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _setup import django_setup


def fill(rows: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox_message")
        if cursor.fetchone()[0] >= rows:
            return
        cursor.execute("TRUNCATE outbox_message, inbox_message")
        cursor.execute(
            """INSERT INTO outbox_message (id, topic, key, sequence, payload, headers, status, attempts,
                   available_at, lease_owner, created_at, last_error)
               SELECT gen_random_uuid(), 'topic.' || (n %% 20), NULL, NULL,
                      jsonb_build_object('n', n), '{}',
                      CASE WHEN n %% 100 = 0 THEN 'failed' WHEN n %% 100 = 1 THEN 'dead' ELSE 'sent' END,
                      1, now(), '', now() - (n || ' seconds')::interval, ''
               FROM generate_series(1, %s) AS n""",
            [rows],
        )
        cursor.execute(
            """INSERT INTO inbox_message (consumer, message_id, topic, payload, headers, status, attempts,
                   received_at, last_error, traceback)
               SELECT 'bench:handler' || (n %% 5), 'm' || n, 'topic.' || (n %% 20), jsonb_build_object('n', n),
                      '{}', CASE WHEN n %% 100 = 0 THEN 'failed' ELSE 'done' END, 1,
                      now() - (n || ' seconds')::interval, '', ''
               FROM generate_series(1, %s) AS n""",
            [rows],
        )
        cursor.execute("ANALYZE outbox_message")
        cursor.execute("ANALYZE inbox_message")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    django_setup("inbox_outbox_bench_admin")
    fill(args.rows)

    from django.contrib.auth.models import User
    from django.test import Client

    from inbox.models import InboxMessage
    from outbox.models import OutboxMessage

    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", "", "x"
    )
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    some_id = OutboxMessage.objects.values_list("id", flat=True).first()
    pages = {
        "admin index (baseline)": "/admin/",
        "outbox list": "/admin/outbox/outboxmessage/",
        "outbox status=failed": "/admin/outbox/outboxmessage/?status__exact=failed",
        "outbox topic filter": "/admin/outbox/outboxmessage/?topic=topic.7",
        "outbox search by id": f"/admin/outbox/outboxmessage/?q={some_id}",
        "outbox date drill-down": "/admin/outbox/outboxmessage/?created_at__year=2026",
        "outbox detail": f"/admin/outbox/outboxmessage/{some_id}/change/",
        "inbox list": "/admin/inbox/inboxmessage/",
        "inbox status=failed": "/admin/inbox/inboxmessage/?status__exact=failed",
        "inbox consumer filter": "/admin/inbox/inboxmessage/?consumer=bench%3Ahandler3",
        "inbox search by id": "/admin/inbox/inboxmessage/?q=m4242",
    }
    print(
        f"{OutboxMessage.objects.count():,} outbox rows, {InboxMessage.objects.count():,} inbox rows"
    )
    base = None
    for label, url in pages.items():
        client.get(url)  # warm up
        times = []
        for _ in range(5):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        median = statistics.median(times)
        base = base or median
        print(f"{label:28s} {median:7.1f} ms   {median / base:5.1f}x the index page")


if __name__ == "__main__":
    main()
