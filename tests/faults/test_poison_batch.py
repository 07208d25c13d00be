"""A poison batch: hostile deliveries ride in the same consumer batches as good traffic while
workers are SIGKILLed and their database connections terminated (issue 13).

Good messages, keyed and keyless, go the normal way (``publish()``, the relay). Hostile ones
are published raw to the service queue, bypassing both: every input of
``tests/integration/test_inbox_bad_input.py`` (NUL in data, id, partitionkey, a header, the
AMQP ``message_id``; NaN, Infinity, 1e400; a sequence of 2**63; a 300-character key; a
100,000-deep array; a 5,000-digit integer; a body that is not UTF-8 or not JSON; a header
list of bytes that are not UTF-8, ...) and two ids over 200 characters that share their first
200. Each is sent several times, each copy a new message.

It fails when one member can stop its batch: with the envelope's NUL check disabled and a
``DataError`` classified as the database's fault (``inbox_outbox/faults.py``), the batches
holding a NUL were held and retried as if the database were down, and the flow stopped at 246
of 1,714 effects ("timed out ... waiting for progress").
"""

import time

import kombu
import pytest

from inbox import topology
from tests.conftest import Sender, wait_until
from tests.faults.harness import (
    Producer,
    RawDelivery,
    System,
    check_books,
    check_queue_drained,
    check_rejected,
    describe,
    queue_depth,
    settle,
)
from tests.faults.test_scenarios import N, effects_so_far, terminate_backends, wait_consuming
from tests.integration.test_inbox_bad_input import HOSTILE, delivery, event_body

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

#: Every kind of hostile delivery, once.
KINDS = [RawDelivery(name, *d) for name, d in HOSTILE.items()] + [
    RawDelivery(f"long_id_{tail}", *delivery(event_body(id="p" * 200 + f"-{tail}")))
    for tail in ("first", "second")
]
#: Copies of every kind queued while no worker runs, each after GAP more good messages, so
#: that the first batches (up to 50 deliveries of a prefetch of 100) mix them with good ones.
BACKLOG_COPIES = 3
GAP = 150
#: Rounds of faults once workers run; each kills a worker, terminates the workers' database
#: connections and sends one more copy of every kind, spread among the live traffic.
ROUNDS = 4
SPREAD = 0.02  # seconds between two hostile deliveries of a round


@pytest.fixture
def system(processes):
    return System(processes)


def ready(broker_url, queue):
    return queue_depth(broker_url, queue)[0]


def send_copies(sender, n, *, spread=0.0):
    copies = [kind.copy(n) for kind in KINDS]
    for copy in copies:
        copy.send(sender)
        time.sleep(spread)
    return copies


def test_a_poison_batch_is_stored_rejected_while_its_good_messages_are_handled_once(
    system, names, broker_url
):
    """16. Hostile deliveries among 2,000 good transactions (a third keyless), first queued
    with no worker running, then sent among live traffic while workers are SIGKILLed and
    their connections terminated: every good message is handled once per consumer, in order
    per key; every hostile one is stored once, rejected with its reason and raw body; the
    queue ends empty and the workers alive."""
    with kombu.Connection(broker_url) as conn:
        topology.declare(conn)  # the queue exists before any worker: a backlog builds up
    system.relay()
    producer = Producer(N, keys=40, keyless_every=3, extra={"sleep": 0.003}, pace=0.002)
    producer.start()
    sender = Sender(names)
    sent: list[RawDelivery] = []
    killed = 0
    try:
        for n in range(BACKLOG_COPIES):
            wait_until(
                lambda n=n: ready(broker_url, names.queue) >= (n + 1) * GAP,
                timeout=60,
                message=lambda: f"good messages queued: {describe()}",
            )
            sent += send_copies(sender, n)
        wait_until(
            lambda: ready(broker_url, names.queue) >= (BACKLOG_COPIES + 1) * GAP,
            timeout=60,
            message="good messages queued behind the last copies",
        )
        for _ in range(2):
            system.worker()
        wait_consuming(broker_url, names.queue, 2)
        for round_ in range(ROUNDS):
            wait_until(
                lambda r=round_: effects_so_far() > (r + 1) * 200,
                timeout=60,
                message=lambda: f"progress: {describe()}",
            )
            system.processes.kill(system.live(system.workers)[0])
            system.worker()
            killed += terminate_backends("faults-worker")
            sent += send_copies(sender, BACKLOG_COPIES + round_, spread=SPREAD)
    finally:
        sender.close()
    assert killed >= ROUNDS, "no worker connection was terminated: the scenario proved nothing"
    settle(producer=producer, timeout=240)
    books = check_books(minimum=producer.expected)
    check_rejected(sent, committed=books["committed"])
    assert len(system.live(system.workers)) == 2, "a worker died"
    check_queue_drained(system, broker_url, names.queue)
    for worker in system.workers:
        log = worker.log_path.read_text()
        assert "Exception in thread" not in log, log[-3000:]
        assert "not even as rejected" not in log, log[-3000:]
