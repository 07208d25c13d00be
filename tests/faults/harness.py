"""The fault suite's machinery: a producer service, the processes under test, and a checker
that proves the books balance from the databases alone.

Producer and consumer are one example service publishing to itself through RabbitMQ: each
producer transaction writes an ``Order`` (the business row) and publishes ``test.effect``;
some transactions roll back on purpose. The consumer's ``record_effect`` handler writes one
``Effect`` per handled message, with its source, key and position, in handling order.

A scenario may add producing services of their own (a :class:`Source`: its own database and
service name) publishing into the same consumer; the checker then balances every source's
books against the one consumer's effects.
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import kombu
from django.db import DatabaseError, InterfaceError, connections, transaction
from django.db.models import QuerySet

from inbox.models import InboxMessage
from inbox.processing import retry_due
from inbox.registry import registry
from inbox_outbox.conf import get_settings
from outbox import publish
from outbox.models import OutboxMessage
from project.shop.models import Order
from tests.conftest import Processes, Sender, test_database_url, wait_until
from tests.testapp.models import Effect

#: Short leases and fast retries, so that faults heal within a test's time.
FAST = {
    "INBOX_OUTBOX_RELAY_LEASE_SECONDS": "3",
    "INBOX_OUTBOX_RELAY_CONFIRM_TIMEOUT": "2",
    "INBOX_OUTBOX_RELAY_BATCH_SIZE": "100",
    "INBOX_OUTBOX_INBOX_BACKOFF_BASE": "0.05",
    "INBOX_OUTBOX_INBOX_BACKOFF_MAX": "0.2",
    "INBOX_OUTBOX_INBOX_MAX_ATTEMPTS": "3",
}


class Rollback(Exception):
    pass


@dataclass(frozen=True)
class Source:
    """A producing service: the test database alias holding its outbox and business rows, and
    the service name its relays publish under (the CloudEvents ``source``). ``name=None`` is
    the service under test itself (``INBOX_OUTBOX["SERVICE"]``), which is also the consumer."""

    using: str = "default"
    name: str | None = None

    @property
    def service(self) -> str:
        return self.name or get_settings().service

    def messages(self) -> QuerySet[OutboxMessage]:
        return OutboxMessage.objects.using(self.using).filter(topic="test.effect")

    def env(self) -> dict[str, str]:
        """What a relay of this service needs in its environment."""
        if self.name is None:
            return {}
        return {"DATABASE_URL": test_database_url(self.using), "SERVICE_NAME": self.name}


#: The service under test, publishing to itself.
HERE = Source()


@dataclass(eq=False)  # threads must stay hashable
class Producer(threading.Thread):
    """Publishes ``count`` messages, one business row + one outbox row per transaction.

    Every ``rollback_every``-th transaction rolls back after publishing. ``hot_share`` of
    the messages go to one hot key; every ``keyless_every``-th has no key. ``extra`` lands
    in every payload (handler flags).
    ``slow_every``: that transaction takes an id early and commits ``slow_seconds`` later,
    so commits come out of id order. Database errors (a terminated connection) just lose
    that transaction, like any client's.
    ``until``: ``count`` is the least it publishes; it goes on (up to ``10 * count``) until
    the event is set, so a flow outlasts faults that take as long as they take.
    """

    count: int
    keys: int = 50
    hot_share: float = 0.0
    keyless_every: int = 0
    rollback_every: int = 7  # coprime with the key counts used, so every key commits
    extra: dict[str, Any] = field(default_factory=dict)
    pace: float = 0.0
    slow_every: int = 0
    slow_seconds: float = 0.5
    first_payloads: dict[int, dict[str, Any]] = field(default_factory=dict)
    source: Source = HERE
    until: threading.Event | None = None

    def __post_init__(self) -> None:
        super().__init__(daemon=True)
        self.errors = 0
        #: Transactions attempted so far (with ``until``, what ``expected`` counts from).
        self.published = 0
        self.done = threading.Event()

    @property
    def expected(self) -> int:
        """Transactions meant to commit; each database error may lose one more."""
        count = self.count if self.until is None else self.published
        rolled_back = len(range(0, count, self.rollback_every)) if self.rollback_every else 0
        return count - rolled_back - self.errors

    def key(self, n: int) -> str | None:
        if self.keyless_every and n % self.keyless_every == 0:
            return None
        if self.hot_share and random.random() < self.hot_share:
            return "hot"
        return f"k{n % self.keys}"

    def run(self) -> None:
        try:
            slow: list[threading.Thread] = []
            for n in range(self.count if self.until is None else 10 * self.count):
                if n >= self.count and (self.until is None or self.until.is_set()):
                    break
                if self.slow_every and n % self.slow_every == 0:
                    slow.append(threading.Thread(target=self._slow, args=(n,), daemon=True))
                    slow[-1].start()
                else:
                    self._one(n)
                self.published = n + 1
                if self.pace:
                    time.sleep(self.pace)
            for thread in slow:
                thread.join(timeout=30)
        finally:
            connections.close_all()
            self.done.set()

    def _one(self, n: int, hold: float = 0.0) -> None:
        try:
            using = self.source.using
            with transaction.atomic(using=using):
                order = Order.objects.using(using).create(customer=f"n{n}", amount=1)
                payload = {
                    "order_id": order.pk,
                    "n": n,
                    **self.extra,
                    **self.first_payloads.get(n, {}),
                }
                self.emit(n, payload)
                if hold:
                    time.sleep(hold)
                if self.rollback_every and n % self.rollback_every == 0:
                    raise Rollback
        except Rollback:
            pass
        except (DatabaseError, InterfaceError):
            self.errors += 1
            for conn in connections.all(initialized_only=True):
                conn.close()

    def emit(self, n: int, payload: dict[str, Any]) -> None:
        """What one transaction sends, inside it: by default a ``test.effect`` event."""
        publish("test.effect", payload, key=self.key(n), using=self.source.using)

    def _slow(self, n: int) -> None:
        try:
            self._one(n, hold=self.slow_seconds)
        finally:
            connections.close_all()


@dataclass
class System:
    """The processes under test, started against the test's database and broker."""

    processes: Processes
    env: dict[str, str] = field(default_factory=dict)
    relays: list[Any] = field(default_factory=list)
    workers: list[Any] = field(default_factory=list)

    def relay(self, source: Source = HERE, **env: str) -> Any:
        proc = self.processes.relay(
            f"relay{len(self.relays)}",
            PGAPPNAME="faults-relay",
            **{**FAST, **self.env, **source.env(), **env},
        )
        self.relays.append(proc)
        return proc

    def worker(self, **env: str) -> Any:
        proc = self.processes.worker(
            f"worker{len(self.workers)}", PGAPPNAME="faults-worker", **{**FAST, **self.env, **env}
        )
        self.workers.append(proc)
        return proc

    def live(self, procs: list[Any]) -> list[Any]:
        return [p for p in procs if p.poll() is None]


def describe(sources: Sequence[Source] = (HERE,)) -> str:
    """The system's state in one line, for failure messages."""
    outbox = {
        source.using: dict(Counter(source.messages().values_list("status", flat=True)))
        for source in sources
    }
    inbox = dict(Counter(InboxMessage.objects.values_list("status", flat=True)))
    effects = Effect.objects.filter(consumer="effect").count()
    shown = outbox[HERE.using] if list(outbox) == [HERE.using] else outbox
    return f"outbox {shown}, inbox {inbox}, effects {effects}"


def settle(
    *,
    producer: Producer | None = None,
    timeout: float = 180,
    expect_dead: int = 0,
    sources: Sequence[Source] = (HERE,),
) -> None:
    """Wait for the system to go quiet, running the inbox's retry sweep as beat would."""
    if producer is not None:
        assert producer.done.wait(timeout), "the producer did not finish"

    def quiet() -> bool:
        retry_due()
        if any(source.messages().unsent().exists() for source in sources):
            return False
        if InboxMessage.objects.filter(status__in=("waiting", "failed")).exists():
            return False
        handled = Effect.objects.filter(consumer="effect").values("message_id").distinct().count()
        committed = sum(source.messages().count() for source in sources)
        return handled + expect_dead >= committed

    wait_until(
        quiet,
        timeout=timeout,
        interval=0.5,
        message=lambda: f"the backlog to drain: {describe(sources)}",
    )
    time.sleep(1.0)  # let a wrongly repeated effect, if any, show up before the books close


def check_books(
    *,
    expect_dead: set[str] | frozenset[str] = frozenset(),
    minimum: int = 0,
    sources: Sequence[Source] = (HERE,),
) -> dict[str, int]:
    """Prove, from the databases alone, that every committed message of every source had
    exactly one effect, and that each stream (source, key) was handled in order."""
    committed: dict[str, Source] = {}
    for source in sources:
        payloads = {str(i): p for i, p in source.messages().values_list("id", "payload")}
        # 1. Atomic publish: an order exists exactly for each committed message.
        order_ids = set(Order.objects.using(source.using).values_list("id", flat=True))
        assert {p["order_id"] for p in payloads.values()} == order_ids, (
            f"{source.service}: business rows and messages disagree"
        )
        # 2. Nothing left unsent.
        statuses = Counter(source.messages().values_list("status", flat=True))
        assert set(statuses) == {"sent"}, f"{source.service}: outbox not drained: {statuses}"
        committed |= dict.fromkeys(payloads, source)
    assert len(committed) >= minimum, f"only {len(committed)} messages committed"
    # 3. Exactly one effect per committed message and consumer; none for anything else.
    for consumer, dead in (("effect", set(expect_dead)), ("audit", set())):
        effects = Counter(
            Effect.objects.filter(consumer=consumer).values_list("message_id", flat=True)
        )
        doubled = {m: n for m, n in effects.items() if n > 1}
        assert not doubled, f"{consumer}: {len(doubled)} messages had more than one effect"
        missing = set(committed) - dead - set(effects)
        assert not missing, f"{consumer}: {len(missing)} committed messages had no effect"
        assert set(effects) <= set(committed), f"{consumer}: effects for uncommitted messages"
        assert not (set(effects) & dead), f"{consumer}: a dead message had an effect"
    # 4. Per-stream order: each (source, key)'s effects in handling order carry increasing
    #    positions (epoch, sequence): a counter restarted in a new epoch counts from 1 again.
    #    Every effect names the service whose outbox the message was committed in. Keyless
    #    messages have no order.
    streams: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for message_id, source_name, key, epoch, seq in (
        Effect.objects.filter(consumer="effect", key__isnull=False)
        .order_by("id")
        .values_list("message_id", "source", "key", "epoch", "sequence")
    ):
        assert source_name == committed[message_id].service, f"{message_id} from {source_name}"
        streams[(source_name, key)].append((epoch, seq))
    for (source_name, key), seen in streams.items():
        assert seen == sorted(seen), f"{source_name} key {key} handled out of order"
    # 5. The inbox holds nothing stuck; dead only where expected.
    stuck = InboxMessage.objects.filter(status__in=("waiting", "failed")).count()
    assert stuck == 0, f"{stuck} inbox rows stuck waiting or failed"
    dead = set(InboxMessage.objects.filter(status="dead").values_list("message_id", flat=True))
    assert dead == set(expect_dead), f"unexpected dead messages: {dead ^ set(expect_dead)}"
    return {
        "committed": len(committed),
        "keys": len({key for _, key in streams}),
        "streams": len(streams),
    }


@dataclass(frozen=True)
class RawDelivery:
    """A delivery put straight on the service queue, bypassing ``publish()`` and the relay:
    what another service, or a hostile one, may send."""

    name: str
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)

    def send(self, sender: Sender) -> None:
        sender.raw(self.body, to_queue=True, application_headers=self.headers, **self.properties)

    def copy(self, n: int) -> RawDelivery:
        """The same content as a new message: the body's first ``id`` gets the prefix
        ``c<n>-`` (a bad id stays as bad); a body without one gets ``n`` trailing blanks
        (JSON or not, it reads as before, but it is another body)."""
        marked = re.sub(rb'"id": "', b'"id": "c%d-' % n, self.body, count=1)
        body = marked if marked != self.body else self.body + b" " * n
        return RawDelivery(f"{self.name} (copy {n})", body, self.properties, self.headers)


def check_rejected(sent: list[RawDelivery], *, committed: int) -> None:
    """Prove that each delivery of ``sent`` is stored exactly once, ``rejected`` with its
    reason and raw body, that nothing else was rejected, and that the inbox holds nothing but
    these and one handled row per committed message and consumer."""
    rejected = list(InboxMessage.objects.rejected().values_list("raw_body", "last_error"))
    stored = Counter(bytes(raw) for raw, _ in rejected)
    wrong = {d.name: stored[d.body] for d in sent if stored[d.body] != 1}
    assert not wrong, f"hostile deliveries not stored exactly once as rejected: {wrong}"
    assert len(rejected) == len(sent), f"{len(rejected) - len(sent)} other rows were rejected"
    assert all(error for _, error in rejected), "a rejected row without its reason"
    statuses = Counter(InboxMessage.objects.values_list("status", flat=True))
    consumers = len(registry.for_topic("test.effect"))
    assert statuses == {"done": committed * consumers, "rejected": len(sent)}, dict(statuses)


def queue_depth(broker_url: str, queue: str) -> tuple[int, int]:
    """(deliveries ready, consumers) of ``queue``, as the broker reports them."""
    with kombu.Connection(broker_url) as conn:
        declared = conn.default_channel.queue_declare(queue, passive=True)
        return declared.message_count, declared.consumer_count


def check_queue_drained(system: System, broker_url: str, queue: str) -> None:
    """Prove that every delivery of ``queue`` was acknowledged, none requeued forever: the
    queue empties while the live workers consume it, and stays empty once they stop cleanly
    (a delivery they still held unacknowledged would go back to it then)."""
    live = system.live(system.workers)
    wait_until(
        lambda: queue_depth(broker_url, queue) == (0, len(live)),
        timeout=60,
        message=lambda: f"the queue to empty: {queue_depth(broker_url, queue)}",
    )
    for worker in live:
        system.processes.kill(worker, signal.SIGTERM)
        assert worker.returncode == 0, "a worker did not stop cleanly on SIGTERM"
    wait_until(lambda: queue_depth(broker_url, queue)[1] == 0, timeout=30, message="no consumer")
    assert queue_depth(broker_url, queue)[0] == 0, "deliveries were left unacknowledged"
