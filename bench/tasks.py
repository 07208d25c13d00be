"""Celery tasks through the outbox against plain Celery, in one run.

    .venv/bin/python bench/tasks.py [--transactions 3000] [--tasks 3000]

1. Enqueue cost: a one-row business transaction alone, with ``task.delay()`` of an
   ``outbox.OutboxTask`` inside it (the task row written in the transaction), and with a plain
   task's ``delay()`` deferred by ``transaction.on_commit`` (what Django's docs suggest, and
   what loses the task when the process dies after COMMIT); transactions per second of each,
   interleaved in rounds so the machine's drift affects them alike. Target: the outbox
   ``delay()`` costs at most 1.35x the transaction alone.
2. End to end: N business transactions each enqueueing one task, with a Celery worker
   (``--pool solo``) and, for the outbox, the relay process running; tasks per second from the
   first enqueue to the last task's commit. Outbox tasks run under ``@exactly_once`` (an inbox
   row per task, in the task's transaction); plain tasks run bare.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import subprocess
import sys
import time
import uuid

from _setup import ROOT, django_setup, stop_processes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transactions", type=int, default=3_000)
    parser.add_argument("--tasks", type=int, default=3_000)
    args = parser.parse_args()
    tag = f"benchtask{uuid.uuid4().hex[:6]}"
    os.environ["SERVICE_NAME"] = tag
    django_setup()
    from celery import current_app
    from django.conf import settings

    from inbox_outbox.conf import get_settings

    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "SERVICE": tag}
    get_settings.cache_clear()
    queue = f"celery-{tag}"
    current_app.conf.task_default_queue = queue
    env = {
        **os.environ,
        "SERVICE_NAME": tag,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    try:
        tx = enqueue_cost(args.transactions)
        print(f"transaction alone:                 {tx['alone']:,.0f} tx/s")
        print(f"with OutboxTask.delay() inside:    {tx['outbox']:,.0f} tx/s")
        print(f"with on_commit(plain task.delay):  {tx['on_commit']:,.0f} tx/s")
        print(
            f"outbox delay() cost:               {tx['alone'] / tx['outbox']:.2f}x the "
            "transaction alone (target <= 1.35x); on_commit + delay(): "
            f"{tx['alone'] / tx['on_commit']:.2f}x"
        )
        ours = end_to_end(args.tasks, env, queue, outbox=True)
        plain = end_to_end(args.tasks, env, queue, outbox=False)
        print(f"end to end, outbox + relay + worker: {ours:,.0f} tasks/s ({args.tasks:,} tasks)")
        print(f"end to end, plain delay() + worker:  {plain:,.0f} tasks/s")
        print(f"ratio:                               {ours / plain:.2f}x plain Celery")
    finally:
        _purge(queue)


def _reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE testapp_effect, inbox_message, outbox_message, shop_order")


def _alone(i: int) -> None:
    from django.db import transaction

    from project.shop.models import Order

    with transaction.atomic():
        Order.objects.create(customer=f"c{i}", amount=1)


def _outbox(i: int) -> None:
    from django.db import transaction

    from bench.benchapp.tasks import task_outbox
    from project.shop.models import Order

    with transaction.atomic():
        Order.objects.create(customer=f"c{i}", amount=1)
        task_outbox.delay(i)


def _on_commit(i: int) -> None:
    from django.db import transaction

    from bench.benchapp.tasks import task_plain
    from project.shop.models import Order

    with transaction.atomic():
        Order.objects.create(customer=f"c{i}", amount=1)
        transaction.on_commit(functools.partial(task_plain.delay, i))


def enqueue_cost(transactions: int) -> dict[str, float]:
    from relay import interleaved

    _reset()
    return interleaved({"alone": _alone, "outbox": _outbox, "on_commit": _on_commit}, transactions)


def end_to_end(count: int, env: dict[str, str], queue: str, *, outbox: bool) -> float:
    from django.db.models import Max

    from tests.testapp.models import Effect

    _reset()
    _purge(queue)
    procs = [
        _start(
            "-m",
            "celery",
            "-A",
            "project",
            "worker",
            "--pool",
            "solo",
            "-Q",
            queue,
            "-n",
            f"benchtask-{uuid.uuid4().hex[:4]}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
            env=env,
        )
    ]
    if outbox:
        procs.append(_start("manage.py", "outbox_relay", env=env))
    try:
        time.sleep(5)  # both consuming / listening
        consumer = "outbox" if outbox else "plain"
        enqueue = _outbox if outbox else _on_commit
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            started = cursor.fetchone()[0]
        for i in range(count):
            enqueue(i)
        deadline = time.monotonic() + count / 20 + 120
        while Effect.objects.filter(consumer=consumer).count() < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {consumer} tasks did not all run")
            time.sleep(0.2)
    finally:
        stop_processes(procs)
    assert Effect.objects.filter(consumer=consumer).values("message_id").distinct().count() == count
    last = Effect.objects.filter(consumer=consumer).aggregate(last=Max("created_at"))["last"]
    return count / (last - started).total_seconds()


def _start(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _purge(queue: str) -> None:
    import kombu

    from inbox_outbox.conf import broker_url

    with kombu.Connection(broker_url()) as conn, contextlib.suppress(*conn.channel_errors):
        conn.default_channel.queue_purge(queue)


if __name__ == "__main__":
    main()
