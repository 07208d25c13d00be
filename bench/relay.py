"""Relay throughput and publish() cost, each against a baseline measured in the same run.

    .venv/bin/python bench/relay.py [--messages 100000] [--transactions 9000] [--breakdown]
    .venv/bin/python bench/relay.py --tracing [--messages 20000] [--tracing-rounds 3]
    .venv/bin/python bench/relay.py --queue-type quorum [--messages 20000]

1. Relay: drain a backlog of N outbox rows to RabbitMQ (confirmed, routed to a queue), against
   a bare baseline that publishes the same bodies with py-amqp and a window of publisher
   confirms (100 in flight), no database.
2. publish(): a one-row business transaction through the ORM, with and without publish(),
   and with the same outbox row inserted by a plain hand-written INSERT (what an outbox
   without prepared statements or deferred rows pays).

``--tracing`` runs only part 1 (the relay, no baseline), with tracing off, with the trace
context carried but no SDK, and on, in rotated order, and prints the ratios of the medians of
the wall-clock rates and of the relay's CPU time per message.

``--queue-type quorum`` runs only part 1, on the three-node cluster of
``bin/rabbitmq-cluster`` (started if it is down; 127.0.0.1:5701-5703): the relay and the
baseline both publish to one quorum queue (members on all three nodes) through its leader's
node, with the relay given all three nodes' URLs as its failover list. Beside it, for
comparison, the same pair on a classic queue on that node. Everything it declares it deletes.

``--breakdown`` runs only part 2, splitting publish()'s cost into its Python, the extra
statement in the commit's round trip, and the row itself.

``--claim`` runs only the relay's claim (lease a batch, no broker), over the same claimable
backlog with 0, 1M and 10M ``sent`` rows in the table and with 100k blocked rows ahead of
it (one key whose head is in backoff, and keyless rows in backoff), each claim beside
one on a second database (``<name>_baseline``) that holds only the claimable backlog: the
0-row baseline, interleaved claim by claim; and with 1M ``scheduled`` rows due in an hour
ahead of it (half keyless, half keyed each under a key of its own that the claim's walk
would visit first), which each claim's promotion step must skip. It fills the table with
``INSERT … SELECT generate_series`` and TRUNCATEs it first: point ``DATABASE_URL`` at a
database of its own. ``--sent '' --blocked 0`` leaves the empty and the scheduled cases.
"""

from __future__ import annotations

import argparse
import resource
import time
import uuid

from _setup import django_setup


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--transactions", type=int, default=9_000)
    parser.add_argument(
        "--keys", type=int, default=0, help="spread messages over this many ordering keys"
    )
    parser.add_argument(
        "--claim", action="store_true", help="only the claim's time against the table's size"
    )
    parser.add_argument(
        "--sent",
        default="1000000,10000000",
        help="--claim: sent-row counts to measure beside the empty table (comma-separated)",
    )
    parser.add_argument("--blocked", type=int, default=100_000, help="--claim: blocked rows")
    parser.add_argument(
        "--scheduled", type=int, default=1_000_000, help="--claim: scheduled rows (0: no case)"
    )
    parser.add_argument("--rounds", type=int, default=300, help="--claim: claims timed per case")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="only the relay, with tracing off and on (OpenTelemetry's SDK, in-memory exporter)",
    )
    parser.add_argument(
        "--tracing-rounds", type=int, default=3, help="--tracing: runs of each variant"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="only the publish() part, with two more variants that show where its cost goes",
    )
    parser.add_argument(
        "--queue-type",
        choices=("classic", "quorum"),
        default="classic",
        help="quorum: only the relay, on a quorum queue of the three-node cluster",
    )
    args = parser.parse_args()
    django_setup()
    if args.queue_type == "quorum":
        bench_quorum(args.messages, args.keys)
        return
    if args.claim:
        bench_claim(
            [int(n) for n in args.sent.split(",") if n], args.blocked, args.scheduled, args.rounds
        )
        return
    if args.breakdown:
        breakdown(args.transactions)
        return
    if args.tracing:
        bench_tracing(args.messages, args.keys, args.tracing_rounds)
        return

    relay_rate, base_rate = bench_relay(args.messages, args.keys)
    print(f"relay:     {relay_rate:,.0f} msg/s for a {args.messages:,}-message backlog")
    print(f"baseline:  {base_rate:,.0f} msg/s (py-amqp, window of 100 confirms, no database)")
    print(f"ratio:     {relay_rate / base_rate:.2f}x of the baseline (target >= 0.60)")

    tx = bench_publish(args.transactions)
    print(f"business transaction without publish(): {tx['without']:,.0f} tx/s")
    print(f"business transaction with publish():    {tx['publish']:,.0f} tx/s")
    print(f"  with the same row by a plain INSERT:   {tx['raw_sql']:,.0f} tx/s")
    print(f"ratio:     {tx['publish'] / tx['without']:.3f}x (target >= 0.74)")
    print(f"plain:     {tx['raw_sql'] / tx['without']:.3f}x for the hand-written INSERT")


def bench_quorum(count: int, keys: int) -> None:
    """The relay and the bare confirmed-publish baseline on a quorum queue of the three-node
    cluster, then on a classic queue on the same node, in one run."""
    from tests.cluster import Cluster, node_url

    cluster = Cluster()
    cluster.start()  # the nodes that are down; a running cluster is left as it is
    print(f"cluster: {cluster.url()} (the relay's failover list; the queues on qc1)")
    quorum, quorum_base = bench_relay(
        count, keys, urls=cluster.url(), queue_arguments={"x-queue-type": "quorum"}
    )
    classic, classic_base = bench_relay(count, keys, urls=node_url(1))
    print(f"quorum relay:      {quorum:,.0f} msg/s for a {count:,}-message backlog")
    print(
        f"quorum baseline:   {quorum_base:,.0f} msg/s (py-amqp, window of 100 confirms, same queue)"
    )
    print(f"ratio:             {quorum / quorum_base:.2f}x of the baseline (target >= 0.60)")
    print(f"classic relay:     {classic:,.0f} msg/s (a classic queue on the same node)")
    print(f"classic baseline:  {classic_base:,.0f} msg/s")
    print(f"ratio:             {classic / classic_base:.2f}x of the baseline")
    print(
        f"quorum/classic:    relay {quorum / classic:.2f}x, baseline {quorum_base / classic_base:.2f}x"
    )


def _forget(exporter):  # type: ignore[no-untyped-def]
    def forget() -> None:
        import gc

        exporter.clear()
        gc.collect()

    return forget


def bench_tracing(count: int, keys: int, rounds: int) -> None:
    """The relay's throughput with tracing off (OpenTelemetry's API without an SDK: no-op
    spans, no context stored) and on (the SDK recording every span into memory; the backlog
    published under it, so every message carries a traceparent the send span links to). A
    third variant carries the same traceparent without the SDK: what the context costs on the
    wire (its bytes, in the body and the AMQP headers), apart from the spans.

    The relay spends most of a drain waiting for PostgreSQL and RabbitMQ, so on a shared
    machine its wall-clock rate moves with the other load more than with tracing: the
    variants run ``rounds`` times in a rotated order (each variant first once per three
    rounds; the first drain of a round pays for what the previous one left behind) and the
    medians are compared. The relay's own user CPU time per message, which is what tracing
    adds to, is reported beside them."""
    import statistics

    from tests import spans

    carried = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    variants = ["off", "carried", "on"]
    rates: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    sends = []
    for round_number in range(rounds):
        shift = round_number % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            spans.uninstall()
            if variant == "on":
                exporter = spans.in_memory()
                # The create spans of the fill stay out of the relay's measurement: a relay
                # process holds only its own spans (thousands alive slow Python's GC).
                rate = bench_relay(
                    count, keys, before_drain=_forget(exporter), baseline=False, cpu=cpu["on"]
                )[0]
                sends = [s for s in exporter.get_finished_spans() if s.name.startswith("send")]
                spans.uninstall()
            else:
                headers = carried if variant == "carried" else None
                rate, _ = bench_relay(
                    count, keys, headers=headers, baseline=False, cpu=cpu[variant]
                )
            rates[variant].append(rate)
    wall = {k: statistics.median(v) for k, v in rates.items()}
    per_message = {k: statistics.median(v) / count * 1e6 for k, v in cpu.items()}

    def runs(variant: str) -> str:
        return ", ".join(f"{r:,.0f}" for r in rates[variant])

    def cpu_runs(variant: str) -> str:
        return ", ".join(f"{c / count * 1e6:.0f}" for c in cpu[variant])

    print(f"relay, {count:,} messages, {rounds} rounds, medians (each run's rate in brackets):")
    print(f"  tracing off:                    {wall['off']:,.0f} msg/s [{runs('off')}]")
    print(f"  traceparent carried, no SDK:    {wall['carried']:,.0f} msg/s [{runs('carried')}]")
    print(
        f"  tracing on:                     {wall['on']:,.0f} msg/s [{runs('on')}] "
        f"({len(sends)} send spans, SDK, in-memory exporter)"
    )
    print("  relay user CPU per message, microseconds:")
    for variant in variants:
        print(f"    {variant:8} {per_message[variant]:6.1f} [{cpu_runs(variant)}]")
    print(
        f"ratio:     {wall['on'] / wall['off']:.2f}x wall-clock (target >= 0.90); "
        f"the spans alone {wall['on'] / wall['carried']:.2f}x"
    )
    print(
        f"CPU ratio: {per_message['off'] / per_message['on']:.2f}x (the relay's user CPU per message, "
        f"off / on); the spans alone {per_message['carried'] / per_message['on']:.2f}x"
    )


def _messages(count: int) -> list[tuple[bytes, dict]]:
    """The relay's messages, encoded ahead of time: bodies and the same AMQP properties."""
    from django.utils import timezone

    from inbox_outbox.cloudevents import Outgoing, amqp_properties, encode

    now = timezone.now()
    outgoing = (
        Outgoing(
            id=uuid.uuid4(),
            topic="bench.event",
            key=None,
            sequence=None,
            epoch=None,
            voids=None,
            payload_json=f'{{"n":{i},"text":"payload {i}"}}',
            headers={},
            created_at=now,
            expires_at=None,
        )
        for i in range(count)
    )
    return [(encode(m, source="bench"), amqp_properties(m, now=now)) for m in outgoing]


def bench_relay(  # type: ignore[no-untyped-def]
    count: int,
    keys: int,
    before_drain=None,
    headers=None,
    *,
    urls: str | None = None,
    queue_arguments: dict[str, object] | None = None,
    baseline: bool = True,
    cpu: list[float] | None = None,
) -> tuple[float, float]:
    """The relay's rate and the baseline's, one after the other publishing ``count``
    messages to one queue (declared with ``queue_arguments``, e.g. a quorum queue's) on
    ``urls`` (by default the configured broker; several URLs: the relay's failover list,
    the queue and the baseline on the first). The exchange and the queue are deleted
    afterwards, also when a part fails. Without ``baseline`` its rate is 0.0; ``cpu`` gets
    the relay's user CPU seconds for the drain."""
    import kombu
    from django.conf import settings

    from inbox_outbox.conf import broker_url

    tag = uuid.uuid4().hex[:8]
    settings.INBOX_OUTBOX = {
        **settings.INBOX_OUTBOX,
        "EXCHANGE": f"bench-{tag}",
        "SERVICE": f"bench-{tag}",
        **({"BROKER_URL": urls} if urls else {}),
    }
    from inbox_outbox.conf import get_settings

    get_settings.cache_clear()
    url = broker_url().split(";")[0]  # where the queue is declared, its leader's node
    exchange = kombu.Exchange(f"bench-{tag}", "topic", durable=True)
    queue = kombu.Queue(
        f"bench-{tag}",
        exchange=exchange,
        routing_key="bench.#",
        durable=True,
        queue_arguments=queue_arguments,
    )
    with kombu.Connection(url) as conn:
        queue(conn.default_channel).declare()
    try:
        return _relay_and_baseline(
            count,
            keys,
            url,
            tag,
            queue,
            before_drain=before_drain,
            headers=headers,
            baseline=baseline,
            cpu=cpu,
        )
    finally:
        _purge(url, queue, delete=True)
        with kombu.Connection(url) as c:
            c.default_channel.exchange_delete(f"bench-{tag}")


def _relay_and_baseline(  # type: ignore[no-untyped-def]
    count: int, keys: int, url: str, tag: str, queue, *, before_drain, headers, baseline, cpu
) -> tuple[float, float]:
    import amqp
    import kombu
    from django.db import connection

    from outbox.models import OutboxMessage
    from outbox.relay import Relay

    # Fill the backlog (not timed).
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_message, outbox_sequence")
    from django.db import transaction

    from outbox import publish

    for start in range(0, count, 1000):
        with transaction.atomic():
            for i in range(start, min(start + 1000, count)):
                publish(
                    "bench.event",
                    {"n": i, "text": f"payload {i}"},
                    key=f"k{i % keys}" if keys else None,
                    headers=headers,
                )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE outbox_message")

    if before_drain is not None:
        before_drain()
    relay = Relay()
    started, cpu_started = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    settled = relay.drain()
    relay_seconds = time.perf_counter() - started
    if cpu is not None:  # user time: the kernel's share of a socket write moves with the load
        cpu.append(resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_started)
    relay.close()
    assert settled == count, f"relay settled {settled} of {count}"
    assert OutboxMessage.objects.sent().count() == count, "not every message was marked sent"
    if not baseline:
        return count / relay_seconds, 0.0
    _purge(url, queue)

    # Baseline: the same messages (bodies and properties, encoded before the clock starts),
    # a window of 100 confirms, no database.
    messages = _messages(count)
    info = kombu.Connection(url)  # the relay's broker and vhost
    conn = amqp.Connection(
        f"{info.hostname}:{info.port or 5672}",
        userid=info.userid,
        password=info.password,
        virtual_host=info.virtual_host,
    )
    conn.connect()
    channel = conn.channel()
    channel.confirm_select()
    outstanding = 0

    def on_ack(tag: int, multiple: bool) -> None:
        nonlocal outstanding, acked_up_to
        if multiple:
            outstanding -= tag - acked_up_to
            acked_up_to = tag
        else:
            outstanding -= 1
            acked_up_to = max(acked_up_to, tag)

    acked_up_to = 0
    channel.events["basic_ack"].add(on_ack)
    started = time.perf_counter()
    for body, properties in messages:
        channel.basic_publish(
            amqp.Message(body, **properties),
            exchange=f"bench-{tag}",
            routing_key="bench.event",
            mandatory=True,
        )
        outstanding += 1
        while outstanding >= 100:
            conn.drain_events(timeout=30)
    while outstanding > 0:
        conn.drain_events(timeout=30)
    base_seconds = time.perf_counter() - started
    conn.close()
    return count / relay_seconds, count / base_seconds


def _purge(url: str, queue, delete: bool = False) -> None:  # type: ignore[no-untyped-def]
    import kombu

    with kombu.Connection(url) as conn:
        bound = queue(conn.default_channel)
        bound.delete() if delete else bound.purge()


def _without(i: int) -> None:
    from django.db import transaction

    from project.shop.models import Order

    with transaction.atomic():
        Order.objects.create(customer=f"c{i}", amount=1)


def _with_publish(i: int, *, then=None) -> None:  # type: ignore[no-untyped-def]
    from django.db import transaction

    from outbox import publish
    from project.shop.models import Order

    with transaction.atomic():
        order = Order.objects.create(customer=f"c{i}", amount=1)
        publish("orders.placed", {"order_id": order.pk, "amount": "1.00"})
        if then is not None:
            then()


#: The same outbox row as publish() writes, by a plain INSERT with its own round trip, parsed
#: and planned each time.
_RAW_SQL = (
    "INSERT INTO outbox_message (id, topic, payload, headers, status, attempts, "
    "available_at, lease_owner, created_at, last_error) "
    "VALUES (%s, %s, %s::jsonb, '{}', 'pending', 0, now(), '', now(), '')"
)


def _with_raw_sql(i: int) -> None:
    import json

    from django.db import connection, transaction
    from uuid6 import uuid7

    from project.shop.models import Order

    with transaction.atomic(), connection.cursor() as cursor:
        order = Order.objects.create(customer=f"c{i}", amount=1)
        payload = json.dumps({"order_id": order.pk, "amount": "1.00"})
        cursor.execute(_RAW_SQL, [uuid7(), "orders.placed", payload])


def bench_publish(transactions: int) -> dict[str, float]:
    """A one-row business transaction without ``publish()``, with it, and with the same
    outbox row by a plain hand-written INSERT; transactions per second of each."""
    return interleaved(
        {"without": _without, "publish": _with_publish, "raw_sql": _with_raw_sql}, transactions
    )


def breakdown(transactions: int) -> None:
    """publish()'s cost in parts, by leaving them out one at a time (not a measurement of
    anything users run: the variants discard the outbox row or send a stand-in)."""
    from django.db import connection

    from outbox.session import Session

    send = Session.flush

    def stand_in(self: Session, *, commit: bool = False) -> bool:
        """The same round trips, with ``SELECT 1`` where the held rows would go."""
        if self.pending:
            self.pending = [("SELECT 1", [])]
        return send(self, commit=commit)

    def python_only(i: int) -> None:
        _with_publish(i, then=lambda: connection._outbox_session.discard())

    def with_stand_in(i: int) -> None:
        Session.flush = stand_in  # type: ignore[method-assign]
        try:
            _with_publish(i)
        finally:
            Session.flush = send  # type: ignore[method-assign]

    tx = interleaved(
        {
            "without": _without,
            "python": python_only,
            "stand_in": with_stand_in,
            "publish": _with_publish,
        },
        transactions,
    )
    us = {name: 1e6 / rate for name, rate in tx.items()}
    print(f"business transaction without publish(): {us['without']:,.0f} us")
    print(f"publish()'s Python, row discarded:      +{us['python'] - us['without']:,.0f} us")
    print(f"  and SELECT 1 sent where the row goes: +{us['stand_in'] - us['python']:,.0f} us")
    print(f"  and the row itself:                   +{us['publish'] - us['stand_in']:,.0f} us")


def interleaved(variants, transactions: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Interleave short rounds of the variants (100 transactions each) so that the machine's
    drift affects them alike; the median round of each, in transactions per second."""
    import statistics

    from django.conf import settings

    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "NUDGE": True}
    per_round = 100
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(max(transactions // per_round, 1)):
        for name, run in variants.items():
            started = time.perf_counter()
            for i in range(per_round):
                run(i)
            rates[name].append(per_round / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


# -- the claim against the table's size ----------------------------------------------------

#: Claimable rows, the same in every case: keyless ones, and keyed ones in runs of 100.
CLAIM_KEYLESS, CLAIM_KEYS, CLAIM_RUN = 5_000, 50, 100
CLAIM_BATCH = 100

#: A UUIDv7-shaped id from a timestamp and a serial number, so that ids sort by time as
#: publish()'s do.
_UUID7 = (
    "(lpad(to_hex((extract(epoch from {ts}) * 1000)::bigint), 12, '0') || '7000' || '8' "
    "|| lpad(to_hex({n}), 15, '0'))::uuid"
)
_COLUMNS = (
    "id, topic, key, sequence, epoch, payload, headers, status, attempts, available_at, "
    "lease_owner, created_at, sent_at, last_error"
)


def _fill_sent(cursor, first: int, last: int) -> None:  # type: ignore[no-untyped-def]
    """Rows ``first``..``last`` of the sent history, older than everything else; half keyed."""
    ts = "(timestamptz '2026-01-01' + g * interval '1 millisecond')"
    cursor.execute(
        f"INSERT INTO outbox_message ({_COLUMNS}) "
        f"SELECT {_UUID7.format(ts=ts, n='g')}, 'bench.sent', "
        "CASE WHEN mod(g, 2) = 0 THEN 'k' || mod(g, 1000) END, "
        "CASE WHEN mod(g, 2) = 0 THEN g / 2000 + 1 END, CASE WHEN mod(g, 2) = 0 THEN 1 END, "
        f"'{{\"n\": 1}}'::jsonb, '{{}}'::jsonb, 'sent', 1, {ts}, '', {ts}, {ts}, '' "
        "FROM generate_series(%s, %s) g",
        [first, last],
    )


def _fill_claimable(cursor, blocked: int) -> None:  # type: ignore[no-untyped-def]
    """The claimable backlog (fresh), behind ``blocked`` rows of one key whose head is in
    backoff and as many keyless rows in backoff, all older than it."""
    cursor.execute("DELETE FROM outbox_message WHERE topic IN ('bench.claim', 'bench.blocked')")
    now = "(now() - interval '1 minute' + g * interval '1 microsecond')"
    cursor.execute(
        f"INSERT INTO outbox_message ({_COLUMNS}) "
        f"SELECT {_UUID7.format(ts=now, n='g + 100000000')}, 'bench.claim', "
        f"CASE WHEN g > {CLAIM_KEYLESS} THEN 'k' || mod(g, {CLAIM_KEYS}) END, "
        f"CASE WHEN g > {CLAIM_KEYLESS} THEN (g - {CLAIM_KEYLESS} - 1) / {CLAIM_KEYS} + 1 END, "
        f"CASE WHEN g > {CLAIM_KEYLESS} THEN 1 END, '{{\"n\": 1}}'::jsonb, '{{}}'::jsonb, "
        f"'pending', 0, {now}, '', {now}, NULL, '' "
        "FROM generate_series(1, %s) g",
        [CLAIM_KEYLESS + CLAIM_KEYS * CLAIM_RUN],
    )
    if not blocked:
        return
    ago = "(now() - interval '1 hour' + g * interval '1 microsecond')"
    later = "now() + interval '1 hour'"
    # One key: its head in backoff, the rest queued behind it. Keyless rows in backoff.
    cursor.execute(
        f"INSERT INTO outbox_message ({_COLUMNS}) "
        f"SELECT {_UUID7.format(ts=ago, n='g + 200000000')}, 'bench.blocked', "
        f"CASE WHEN g <= %s THEN 'hot' END, CASE WHEN g <= %s THEN g END, "
        "CASE WHEN g <= %s THEN 1 END, '{}'::jsonb, '{}'::jsonb, "
        "CASE WHEN g = 1 OR g > %s THEN 'failed' ELSE 'pending' END, 0, "
        f"CASE WHEN g = 1 OR g > %s THEN {later} ELSE {ago} END, '', {ago}, NULL, '' "
        "FROM generate_series(1, %s) g",
        [blocked, blocked, blocked, blocked, blocked, 2 * blocked],
    )


#: The scheduled rows' topic: it sorts before the claimable backlog's, so the walk over the
#: keys would meet their keys first if scheduled rows were in its index.
SCHEDULED_TOPIC = "bench.a-scheduled"


def _fill_scheduled(cursor, count: int) -> None:  # type: ignore[no-untyped-def]
    """``count`` scheduled rows due in an hour, older than the backlog: odd ones keyless,
    even ones each under a key of their own."""
    cursor.execute(f"DELETE FROM outbox_message WHERE topic = '{SCHEDULED_TOPIC}'")
    if not count:
        return
    ago = "(now() - interval '2 hours' + g * interval '1 microsecond')"
    due = "(now() + interval '1 hour' + g * interval '1 microsecond')"
    keyed = "mod(g, 2) = 0"
    cursor.execute(
        f"INSERT INTO outbox_message ({_COLUMNS}) "
        f"SELECT {_UUID7.format(ts=ago, n='g + 300000000')}, '{SCHEDULED_TOPIC}', "
        f"CASE WHEN {keyed} THEN 's' || g END, CASE WHEN {keyed} THEN 1 END, "
        f"CASE WHEN {keyed} THEN 1 END, '{{}}'::jsonb, '{{}}'::jsonb, 'scheduled', 0, {due}, "
        f"'', {ago}, NULL, '' FROM generate_series(1, %s) g",
        [count],
    )


def _claims(relay, alias: str) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """One claim of a batch on ``alias``, timed, then released (untimed): seconds, rows."""
    from outbox.models import OutboxMessage

    started = time.perf_counter()
    claimed = relay._claim()
    elapsed = time.perf_counter() - started
    ids = [m.id for m in claimed.batch]
    assert not any(m.topic == "bench.blocked" for m in claimed.batch), "a blocked row"
    assert not any(m.topic == SCHEDULED_TOPIC for m in claimed.batch), "a scheduled row"
    OutboxMessage.objects.using(alias).filter(id__any=ids).update(lease_owner="", lease_until=None)
    return elapsed, len(ids)


def _time_claims(rounds: int) -> tuple[float, float, float, int]:
    """``rounds`` claims of a batch on the table under test, each followed by one on the
    baseline database (the same claimable backlog and nothing else), so that the machine's
    drift touches both alike. Medians of both, the 95th percentile under test, and the
    fewest rows a claim returned."""
    import statistics

    from outbox.publisher import Publisher
    from outbox.relay import Relay

    relays = {
        alias: Relay(using=alias, publisher=Publisher(), batch_size=CLAIM_BATCH)
        for alias in ("default", BASELINE)
    }
    times: dict[str, list[float]] = {alias: [] for alias in relays}
    fewest = CLAIM_BATCH
    for n in range(rounds + 20):  # 20 to warm up
        for alias, relay in relays.items():
            elapsed, rows = _claims(relay, alias)
            if n >= 20:
                times[alias].append(elapsed)
                fewest = min(fewest, rows)
    for relay in relays.values():
        relay.keeper.stop()
    ours = sorted(times["default"])
    return (
        statistics.median(ours),
        statistics.median(times[BASELINE]),
        ours[int(len(ours) * 0.95)],
        fewest,
    )


#: The database alias of the 0-row baseline: ``DATABASE_URL``'s database name + ``_baseline``.
BASELINE = "claim_baseline"


def _baseline_database() -> None:
    from _setup import _ensure_database
    from django.core.management import call_command
    from django.db import connections

    config = dict(connections.databases["default"])
    config["NAME"] = f"{config['NAME']}_baseline"
    connections.databases[BASELINE] = config
    _ensure_database(f"postgres://postgres@127.0.0.1:5432/{config['NAME']}")
    call_command("migrate", database=BASELINE, verbosity=0)
    with connections[BASELINE].cursor() as cursor:
        cursor.execute("TRUNCATE outbox_message, outbox_sequence")


def _refill_baseline() -> None:
    """The baseline's backlog afresh, as each case's is (claims leave dead row versions)."""
    from django.db import connections

    with connections[BASELINE].cursor() as cursor:
        _fill_claimable(cursor, 0)
        cursor.execute("VACUUM ANALYZE outbox_message")


def bench_claim(sent_levels: list[int], blocked: int, scheduled: int, rounds: int) -> None:
    from django.db import connection

    _baseline_database()
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("TRUNCATE outbox_message, outbox_sequence")
    # (label, sent rows, blocked rows, scheduled rows)
    cases: list[tuple[str, int, int, int]] = [("empty table (the baseline's twin)", 0, 0, 0)]
    if blocked:
        cases.append((f"{blocked:,} + {blocked:,} blocked ahead", 0, blocked, 0))
    if scheduled:
        cases.append((f"{scheduled:,} scheduled ahead", 0, 0, scheduled))
    cases += [(f"{n:,} sent rows", n, 0, 0) for n in sent_levels]
    if blocked and sent_levels:
        cases.append(
            (f"{sent_levels[-1]:,} sent and {blocked:,} blocked", sent_levels[-1], blocked, 0)
        )
    filled = 0
    print(
        f"claim of a batch of {CLAIM_BATCH} from {CLAIM_KEYLESS:,} keyless rows and "
        f"{CLAIM_KEYS} keys x {CLAIM_RUN}; median of {rounds} claims, each beside one on "
        "a database holding only that backlog (the 0-row baseline)"
    )
    for label, sent, blocked_rows, scheduled_rows in cases:
        with connection.cursor() as cursor:
            started = time.perf_counter()
            while filled < sent:  # in steps of a million: one statement's WAL stays small
                step = min(1_000_000, sent - filled)
                _fill_sent(cursor, filled + 1, filled + step)
                filled += step
            _fill_claimable(cursor, blocked_rows)
            _fill_scheduled(cursor, scheduled_rows)
            cursor.execute("VACUUM ANALYZE outbox_message")
            fill = time.perf_counter() - started
        _refill_baseline()
        median, baseline, p95, fewest = _time_claims(rounds)
        print(
            f"{label:<36} {median * 1000:6.2f} ms (p95 {p95 * 1000:6.2f})  "
            f"baseline {baseline * 1000:6.2f} ms  {median / baseline:5.2f}x  "
            f"rows/claim >= {fewest}  [filled in {fill:.0f}s]"
        )


if __name__ == "__main__":
    main()
