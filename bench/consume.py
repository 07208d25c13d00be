"""Consumer throughput, concurrency and commit-to-handler latency, against baselines in one run.

    .venv/bin/python bench/consume.py [--messages 50000] [--workers 1] [--io-messages 2000]
        [--skip throughput|io|latency] [--profile FILE]
    .venv/bin/python bench/consume.py --tracing [--messages 20000] [--tracing-rounds 3]:
        throughput off vs on, alternated, medians

1. Throughput: N CloudEvents messages wait in the service queue; W Celery worker processes
   (`celery -A project worker --pool solo`, the inbox consumer step) handle them, one
   business insert per message. Measured from the first to the last handler's row.
   Two raw psycopg baselines in the same run, each doing the same two inserts per message
   (the effect, and an inbox-style ``INSERT … ON CONFLICT DO NOTHING``): W connections
   committing each message, and one connection committing 100 at a time in pipeline mode.
   The machine is shared: compare the ratios, which come from one run, not the rates.
2. I/O-bound: keyed messages over many keys, a handler that sleeps 10 ms; one worker at
   ``INBOX_CONCURRENCY`` 8 against 1, each key's rows checked to have run 1, 2, 3… in order.
3. Latency: with the relay running as a long-running process (``manage.py outbox_relay``)
   and the workers up, transactions publish at a steady rate; latency is the handler's
   commit time minus the publishing transaction's time, p50 and p99.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid

from _setup import ROOT, django_setup, stop_processes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--io-messages", type=int, default=2_000)
    parser.add_argument("--io-keys", type=int, default=200)
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="only throughput, with tracing off and on (the SDK, in-memory exporter, in workers)",
    )
    parser.add_argument(
        "--tracing-rounds", type=int, default=3, help="--tracing: runs of each variant"
    )
    parser.add_argument("--latency-messages", type=int, default=1_000)
    parser.add_argument("--latency-rate", type=float, default=200.0, help="transactions per second")
    parser.add_argument(
        "--skip", action="append", default=[], choices=["throughput", "io", "latency"]
    )
    parser.add_argument(
        "--rss",
        type=int,
        metavar="N",
        help="only the memory run: N messages queued, one worker's RSS sampled while it works",
    )
    parser.add_argument("--rss-seconds", type=float, default=60.0)
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="only the throughput run, one worker sampled by py-spy (wall clock, per thread) "
        "into FILE; then summarised by bench/profile_summary.py",
    )
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
            tracing(args, env)
            return
        if args.profile:
            ours = bench_workers(args.messages, 1, env, profile=args.profile)
            print(f"consumer:  {ours:,.0f} msg/s under py-spy; samples in {args.profile}")
            return
        if args.rss:
            memory(args.rss, args.rss_seconds, env)
            return
        if "throughput" not in args.skip:
            throughput(args, env)
        if "io" not in args.skip:
            io_bound(args, env)
        if "latency" not in args.skip:
            p50, p99 = bench_latency(args.latency_messages, args.latency_rate, args.workers, env)
            print(
                f"latency:   commit-to-handler p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                f"({args.latency_messages} transactions at {args.latency_rate:.0f}/s, relay "
                "running; target p50 < 10 ms, p99 < 50 ms)"
            )
    finally:
        _cleanup(tag)


def tracing(args: argparse.Namespace, env: dict[str, str]) -> None:
    """Throughput with tracing off and on (the SDK in the workers, traceparents on every
    message), ``--tracing-rounds`` times each, alternating which goes first (a run's rate
    moves with the shared machine's load far more than with tracing); medians compared."""
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for round_number in range(args.tracing_rounds):
        order = ["off", "on"] if round_number % 2 == 0 else ["on", "off"]
        for variant in order:
            traced = {"BENCH_TRACING": "1"} if variant == "on" else {}
            rates[variant].append(bench_workers(args.messages, args.workers, {**env, **traced}))
    off, on = (statistics.median(rates[k]) for k in ("off", "on"))

    def runs(variant: str) -> str:
        return ", ".join(f"{r:,.0f}" for r in rates[variant])

    print(f"consumer, {args.messages:,} messages, {args.workers} workers, medians of runs:")
    print(f"  tracing off: {off:,.0f} msg/s [{runs('off')}]")
    print(f"  tracing on:  {on:,.0f} msg/s [{runs('on')}] (SDK, in-memory exporter, traceparents)")
    print(f"ratio:     {on / off:.2f}x (target >= 0.90)")


def throughput(args: argparse.Namespace, env: dict[str, str]) -> None:
    """The one-row handler against both raw psycopg baselines, all three in this run."""
    ours = bench_workers(args.messages, args.workers, env)
    each = bench_baseline(args.messages, args.workers, per_transaction=1)
    batched = bench_baseline(args.messages, 1, per_transaction=BATCHED)
    print(
        f"consumer:  {ours:,.0f} msg/s ({args.workers} worker process(es), "
        f"{args.messages:,} messages, one-row handler)"
    )
    print(
        f"baseline:  {each:,.0f} msg/s (psycopg, {args.workers} connection(s): insert + "
        "INSERT ... ON CONFLICT DO NOTHING, commit each)"
    )
    print(
        f"batched:   {batched:,.0f} msg/s (psycopg, one connection: the same two inserts, "
        f"{BATCHED} per transaction, pipeline mode)"
    )
    print(
        f"ratios:    {ours / each:.2f}x commit-each (target >= 1.5), "
        f"{ours / batched:.2f}x batched (target >= 0.3)"
    )


def io_bound(args: argparse.Namespace, env: dict[str, str]) -> None:
    """A 10 ms handler on keyed messages: INBOX_CONCURRENCY 8 against 1, order checked."""
    rates = {}
    for concurrency in (1, 8):
        rates[concurrency] = bench_io(
            args.io_messages,
            keys=args.io_keys,
            env={**env, "INBOX_OUTBOX_INBOX_CONCURRENCY": str(concurrency)},
        )
    print(
        f"io-bound:  {rates[8]:,.0f} msg/s at INBOX_CONCURRENCY 8, {rates[1]:,.0f} at 1 "
        f"({args.io_messages:,} messages over {args.io_keys} keys, 10 ms handler, one worker; "
        "per-key order verified)"
    )
    print(f"ratio:     {rates[8] / rates[1]:.2f}x concurrency 8 over 1 (target >= 5)")


def memory(count: int, seconds: float, env: dict[str, str]) -> None:
    """A worker's resident memory while it works through a backlog of ``count`` messages."""
    from tests.testapp.models import Effect

    _reset()
    _fill(count, topic="bench.consume")
    [proc] = _start_workers(1, env)
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    try:
        _wait_for(lambda: Effect.objects.exists(), timeout=120, what="the first effect")
        while time.monotonic() - started < seconds:
            samples.append((time.monotonic() - started, _rss_kib(proc.pid), Effect.objects.count()))
            time.sleep(seconds / 20)
    finally:
        stop_processes([proc])
    for at, rss, handled in samples:
        print(f"rss:       {at:5.1f} s  {rss / 1024:6.1f} MiB  {handled:>7,} handled")
    rss = [kib for _, kib, _ in samples]
    print(
        f"memory:    worker RSS {min(rss) / 1024:.1f}-{max(rss) / 1024:.1f} MiB over "
        f"{samples[-1][2] - samples[0][2]:,} messages with {count:,} queued "
        f"(first sample {rss[0] / 1024:.1f} MiB, last {rss[-1] / 1024:.1f} MiB)"
    )


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


#: Messages per transaction of the batched baseline.
BATCHED = 100


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


def _wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.2)


def _sample(pid: int, path: str) -> subprocess.Popen:
    """py-spy sampling process ``pid`` (all threads, idle ones too: a wait is where time goes)."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    return subprocess.Popen(
        [
            *(spy, "record", "--pid", str(pid), "--idle", "--threads", "--rate", "250"),
            *("--nonblocking", "--format", "raw", "--output", path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _fill(count: int, *, topic: str, keys: int = 0, traced: bool = False) -> None:
    """Put ``count`` CloudEvents of ``topic`` in the service queue (not timed), and wait until
    the queue holds them all. With ``keys``, message i has key ``k<i mod keys>`` and the next
    sequence of that key, as the relay would publish them."""
    import amqp
    import kombu
    from django.utils import timezone

    from inbox.consumer import service_queue
    from inbox_outbox.cloudevents import Outgoing, amqp_properties, encode
    from inbox_outbox.conf import broker_url, get_settings

    conf = get_settings()
    with kombu.Connection(broker_url()) as conn:
        service_queue()(conn.default_channel).declare()
    now = timezone.now()
    conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
    conn.connect()
    try:
        channel = conn.channel()
        for i in range(count):
            key = f"k{i % keys}" if keys else None
            message = Outgoing(
                id=uuid.uuid4(),
                topic=topic,
                key=key,
                sequence=i // keys + 1 if keys else None,
                epoch=1 if keys else None,
                voids=None,
                payload_json=f'{{"n":{i}}}',
                # Traced workers get what a traced producer sends: a creation context.
                headers=(
                    {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"}
                    if traced
                    else {}
                ),
                created_at=now,
                expires_at=None,
            )
            channel.basic_publish(
                amqp.Message(encode(message, source="bench"), **amqp_properties(message, now=now)),
                exchange=conf.exchange,
                routing_key=topic,
            )
        _wait_for(
            lambda: channel.queue_declare(conf.queue_name, passive=True).message_count >= count,
            timeout=60 + count / 1000,
            what="the queue to hold every message",
        )
    finally:
        conn.close()


def bench_workers(
    count: int, workers: int, env: dict[str, str], *, profile: str | None = None
) -> float:
    from django.db.models import Max, Min

    from tests.testapp.models import Effect

    _reset()
    _fill(count, topic="bench.consume", traced=bool(env.get("BENCH_TRACING")))
    procs = _start_workers(workers, env)
    sampler = _sample(procs[0].pid, profile) if profile else None
    try:
        _wait_for(
            lambda: Effect.objects.count() >= count,
            timeout=count / 50 + 120,
            what=f"{count} effects",
        )
    finally:
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its samples when interrupted
            sampler.wait(timeout=60)
        stop_processes(procs)
    span = Effect.objects.aggregate(first=Min("created_at"), last=Max("created_at"))
    assert Effect.objects.values("message_id").distinct().count() == count, (
        "an effect is missing or doubled"
    )
    return count / (span["last"] - span["first"]).total_seconds()


#: The effect insert of the baselines (the other is the consumer's own inbox row statement).
_BASE_EFFECT = (
    "INSERT INTO testapp_effect (consumer, message_id, source, epoch, created_at)"
    " VALUES ('base', %s, '', 0, now())"
)


def _inbox_params(message_id: str) -> list[object]:
    """The parameters of ``inbox.sql.insert_row_unless_seen`` for a processed keyless row."""
    row = ("base", message_id, "bench.consume", "bench", None, None, None, None)
    return [*row, '{"n": 1}', "{}", None, "done", 1, None, True, None, "", ""]


def _baseline_worker(dsn: str, ids: list[str], per_transaction: int, barrier) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    from inbox.sql import insert_row_unless_seen

    inbox = insert_row_unless_seen("postgresql")
    with psycopg.connect(dsn) as conn:
        barrier.wait()
        for start in range(0, len(ids), per_transaction):
            chunk = ids[start : start + per_transaction]
            if per_transaction == 1:
                with conn.transaction():
                    conn.execute(inbox, _inbox_params(chunk[0]))
                    conn.execute(_BASE_EFFECT, chunk)
                continue
            with conn.pipeline(), conn.transaction(), conn.cursor() as cursor:
                for message_id in chunk:
                    cursor.execute(inbox, _inbox_params(message_id))
                    cursor.execute(_BASE_EFFECT, [message_id])


def bench_baseline(count: int, workers: int, *, per_transaction: int) -> float:
    """Raw psycopg doing the consumer's two inserts per message: ``workers`` connections,
    ``per_transaction`` messages per commit (pipelined when more than one)."""
    from django.db import connection

    _reset()
    s = connection.settings_dict
    dsn = f"host={s['HOST'] or '127.0.0.1'} port={s['PORT'] or 5432} dbname={s['NAME']} user={s['USER'] or 'postgres'}"
    ids = [str(uuid.uuid4()) for _ in range(count)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    procs = [
        ctx.Process(target=_baseline_worker, args=(dsn, ids[i::workers], per_transaction, barrier))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    barrier.wait()
    started = time.perf_counter()
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started
    if any(proc.exitcode for proc in procs):
        raise SystemExit("bench: a baseline process failed")
    return count / elapsed


def bench_io(count: int, *, keys: int, env: dict[str, str]) -> float:
    """One worker handling ``count`` keyed messages of the 10 ms handler; messages per second
    from the first to the last handler's row. Checks every key ran 1, 2, 3… in order."""
    from django.db.models import Max, Min

    from tests.testapp.models import Effect

    _reset()
    _fill(count, topic="bench.io", keys=keys)
    procs = _start_workers(1, env)
    rows = Effect.objects.filter(consumer="bench-io")
    try:
        _wait_for(lambda: rows.count() >= count, timeout=count / 50 + 120, what=f"{count} effects")
    finally:
        stop_processes(procs)
    runs: dict[str, list[int]] = {}
    for key, sequence in rows.order_by("id").values_list("key", "sequence"):
        runs.setdefault(key, []).append(sequence)
    for key, sequences in runs.items():
        assert sequences == list(range(1, len(sequences) + 1)), f"key {key} ran out of order"
    assert sum(map(len, runs.values())) == count, "an effect is missing or doubled"
    span = rows.aggregate(first=Min("created_at"), last=Max("created_at"))
    return count / (span["last"] - span["first"]).total_seconds()


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
        stop_processes(procs)
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
        deletes = (
            lambda c: c.queue_delete(tag),
            lambda c: c.queue_delete(f"celery-{tag}"),  # the workers' own task queue
            lambda c: c.exchange_delete(f"{tag}.events"),
            lambda c: c.exchange_delete(f"celery-{tag}"),
        )
        for delete in deletes:
            with contextlib.suppress(conn.channel_errors):
                delete(conn.channel())


if __name__ == "__main__":
    main()
