"""Consumer throughput and commit-to-handler latency, against a baseline in the same run.

    .venv/bin/python bench/consume.py [--messages 50000] [--workers 2]
    .venv/bin/python bench/consume.py --tracing [--messages 20000]: throughput off vs on

1. Throughput: N CloudEvents messages wait in the service queue; W Celery worker processes
   (`celery -A project worker --pool solo`, the inbox consumer step) handle them, one
   business insert per message. Measured from the first to the last handler commit.
   Baseline: W processes doing the same insert plus an inbox-style
   ``INSERT … ON CONFLICT DO NOTHING`` per transaction, straight through psycopg.
2. Latency: with the relay running as a long-running process (``manage.py outbox_relay``)
   and the workers up, transactions publish at a steady rate; latency is the handler's
   commit time minus the publishing transaction's time, p50 and p99.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

from _setup import ROOT, django_setup


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="only throughput, with tracing off and on (the SDK, in-memory exporter, in workers)",
    )
    parser.add_argument("--latency-messages", type=int, default=1_000)
    parser.add_argument("--latency-rate", type=float, default=200.0, help="transactions per second")
    args = parser.parse_args()
    django_setup()

    tag = f"bench{uuid.uuid4().hex[:6]}"
    from django.conf import settings

    from inbox_outbox.conf import get_settings

    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "SERVICE": tag, "EXCHANGE": f"{tag}.events"}
    get_settings.cache_clear()
    env = {
        **os.environ,
        "SERVICE_NAME": tag,
        "EVENTS_EXCHANGE": f"{tag}.events",
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    try:
        if args.tracing:
            off = bench_workers(args.messages, args.workers, env)
            on = bench_workers(args.messages, args.workers, {**env, "BENCH_TRACING": "1"})
            print(f"consumer, tracing off: {off:,.0f} msg/s ({args.workers} workers)")
            print(f"consumer, tracing on:  {on:,.0f} msg/s (SDK, in-memory exporter, traceparents)")
            print(f"ratio:     {on / off:.2f}x (target >= 0.90)")
            return
        ours = bench_workers(args.messages, args.workers, env)
        base = bench_baseline(args.messages, args.workers)
        print(
            f"consumer:  {ours:,.0f} msg/s ({args.workers} worker processes, {args.messages:,} messages)"
        )
        print(
            f"baseline:  {base:,.0f} msg/s (psycopg: insert + INSERT ... ON CONFLICT DO NOTHING, commit each)"
        )
        print(f"ratio:     {ours / base:.2f}x of the baseline (target >= 0.60)")
        p50, p99 = bench_latency(args.latency_messages, args.latency_rate, args.workers, env)
        print(
            f"latency:   commit-to-handler p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"({args.latency_messages} transactions at {args.latency_rate:.0f}/s; target p50 < 20 ms)"
        )
    finally:
        _cleanup(tag)


def _reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE testapp_effect, inbox_message, inbox_key_progress, outbox_message")


def _start_workers(count: int, env: dict[str, str]) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "project",
                "worker",
                "--pool",
                "solo",
                "-n",
                f"bench{i}-{uuid.uuid4().hex[:4]}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
                "-Q",
                f"celery-{env['SERVICE_NAME']}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for i in range(count)
    ]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.2)


def bench_workers(count: int, workers: int, env: dict[str, str]) -> float:
    import amqp
    import kombu
    from django.db.models import Max, Min
    from django.utils import timezone

    from inbox.consumer import service_queue
    from inbox_outbox.cloudevents import Outgoing, amqp_properties, encode
    from inbox_outbox.conf import broker_url, get_settings
    from tests.testapp.models import Effect

    _reset()
    conf = get_settings()
    with kombu.Connection(broker_url()) as conn:
        service_queue()(conn.default_channel).declare()
    # Fill the queue before the workers start (not timed), then check it holds them all.
    now = timezone.now()
    conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
    conn.connect()
    channel = conn.channel()
    # Traced workers get what a traced producer sends: a creation context on each message.
    headers = (
        {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"}
        if env.get("BENCH_TRACING")
        else {}
    )
    for i in range(count):
        message = Outgoing(
            id=uuid.uuid4(),
            topic="bench.consume",
            key=None,
            sequence=None,
            epoch=None,
            voids=None,
            payload_json=f'{{"n":{i}}}',
            headers=headers,
            created_at=now,
            expires_at=None,
        )
        body = encode(message, source="bench")
        channel.basic_publish(
            amqp.Message(body, **amqp_properties(message, now=now)),
            exchange=conf.exchange,
            routing_key="bench.consume",
        )
    _wait_for(
        lambda: channel.queue_declare(conf.queue_name, passive=True).message_count >= count,
        timeout=60,
        what="the queue to hold every message",
    )
    conn.close()

    procs = _start_workers(workers, env)
    try:
        _wait_for(
            lambda: Effect.objects.count() >= count,
            timeout=count / 50 + 120,
            what=f"{count} effects",
        )
    finally:
        _stop(procs)
    span = Effect.objects.aggregate(first=Min("created_at"), last=Max("created_at"))
    assert Effect.objects.values("message_id").distinct().count() == count, (
        "an effect is missing or doubled"
    )
    return count / (span["last"] - span["first"]).total_seconds()


def _baseline_worker(dsn: str, ids: list[str], barrier) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    with psycopg.connect(dsn) as conn:
        barrier.wait()
        for message_id in ids:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO inbox_message (consumer, message_id, topic, payload, headers, status, attempts,"
                    " received_at, processed_at, last_error, traceback) VALUES ('base', %s, 'bench.consume',"
                    " '{}', '{}', 'done', 1, now(), now(), '', '') ON CONFLICT (consumer, message_id) DO NOTHING",
                    [message_id],
                )
                conn.execute(
                    "INSERT INTO testapp_effect (consumer, message_id, created_at) VALUES ('base', %s, now())",
                    [message_id],
                )


def bench_baseline(count: int, workers: int) -> float:
    from django.db import connection

    _reset()
    s = connection.settings_dict
    dsn = f"host={s['HOST'] or '127.0.0.1'} port={s['PORT'] or 5432} dbname={s['NAME']} user={s['USER'] or 'postgres'}"
    ids = [str(uuid.uuid4()) for _ in range(count)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    procs = [
        ctx.Process(target=_baseline_worker, args=(dsn, ids[i::workers], barrier))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    barrier.wait()
    started = time.perf_counter()
    for proc in procs:
        proc.join()
    return count / (time.perf_counter() - started)


def bench_latency(
    count: int, per_second: float, workers: int, env: dict[str, str]
) -> tuple[float, float]:
    from django.db import transaction

    from outbox import publish
    from outbox.models import OutboxMessage
    from tests.testapp.models import Effect

    _reset()
    procs = _start_workers(workers, env)
    procs.append(
        subprocess.Popen(
            [sys.executable, "manage.py", "outbox_relay"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    )
    try:
        # Warm up: wait until a message makes the whole trip.
        with transaction.atomic():
            publish("bench.consume", {"warmup": True})
        _wait_for(lambda: Effect.objects.exists(), timeout=60, what="the first message to arrive")
        _reset()
        interval = 1.0 / per_second
        started = time.perf_counter()
        for i in range(count):
            with transaction.atomic():
                publish("bench.consume", {"n": i})
            delay = started + (i + 1) * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        _wait_for(lambda: Effect.objects.count() >= count, timeout=120, what=f"{count} effects")
    finally:
        _stop(procs)
    published = dict(OutboxMessage.objects.values_list("id", "created_at"))
    latencies = sorted(
        (handled - published[uuid.UUID(mid)]).total_seconds() * 1000
        for mid, handled in Effect.objects.values_list("message_id", "created_at")
    )
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def _cleanup(tag: str) -> None:
    import kombu

    from inbox_outbox.conf import broker_url

    with kombu.Connection(broker_url()) as conn:
        for delete in (lambda c: c.queue_delete(tag), lambda c: c.exchange_delete(f"{tag}.events")):
            with contextlib.suppress(conn.channel_errors):
                delete(conn.channel())


if __name__ == "__main__":
    main()
