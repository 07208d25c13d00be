"""Two producing services, each with its own outbox database and service name, publish the
same topic and the same keys into one consumer while their relays are SIGKILLed (issue 12).

A stream is (source, topic, key): the two producers' sequences for key ``k3`` are two
streams, each handled in its own order, neither waiting for the other's numbers.
"""

import random
import time

import pytest

from tests.faults.harness import HERE, Producer, Source, System, check_books, settle
from tests.faults.test_scenarios import N, wait_consuming
from tests.settings import OTHER_SERVICE
from tests.testapp.models import Effect

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True, databases=["default", OTHER_SERVICE]),
]

#: Relay kills per producer.
KILLS = 4


def test_two_producers_on_the_same_keys_keep_their_own_order_while_their_relays_are_killed(
    processes, names, broker_url
):
    """15. Both producers publish keys k0..k19 of ``test.effect``; each one's relay is killed
    four times at random points, the two out of step. Every committed message of either
    producer has one effect per consumer, each (source, key) in sequence order."""
    other = Source(using=OTHER_SERVICE, name=f"{names.service}-other")
    sources = (HERE, other)
    system = System(processes)
    system.worker()
    system.worker()
    wait_consuming(broker_url, names.queue, 2)
    producers = [Producer(N // 2, keys=20, pace=0.01, source=source) for source in sources]
    for producer in producers:
        producer.start()
    relays = {source: system.relay(source) for source in sources}
    under_traffic = 0
    for _ in range(KILLS):
        for source in random.sample(sources, len(sources)):
            time.sleep(random.uniform(1.0, 2.5))
            under_traffic += not all(p.done.is_set() for p in producers)
            system.processes.kill(relays[source])
            relays[source] = system.relay(source)
    assert under_traffic >= KILLS, f"only {under_traffic} kills while the producers published"
    for producer in producers:
        assert producer.done.wait(240), "a producer did not finish"
    settle(timeout=240, sources=sources)
    books = check_books(minimum=sum(p.expected for p in producers), sources=sources)
    # Both producers' streams shared every key: the scenario proved something.
    assert books["streams"] == 2 * books["keys"] == 40, books
    served = set(Effect.objects.filter(consumer="effect").values_list("source", flat=True))
    assert served == {HERE.service, other.service}
