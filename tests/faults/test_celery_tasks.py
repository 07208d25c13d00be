"""Celery tasks sent through the outbox in business transactions while relays and workers are
SIGKILLed (issue 16): each committed transaction's task has exactly one effect, no rolled-back
transaction's task has any."""

import random
import time

import pytest

from project.shop.models import Order
from tests.conftest import wait_until
from tests.faults.harness import Producer, System, describe
from tests.faults.test_scenarios import wait_consuming
from tests.testapp.models import Effect
from tests.testapp.tasks import order_effect

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

TRANSACTIONS = 400
KILLS = 3


class TaskProducer(Producer):
    """Each transaction creates an order and sends ``order_effect`` for it with ``.delay()``
    semantics through ``outbox.OutboxTask``; every 7th rolls back."""

    queue: str = ""

    def emit(self, n, payload):
        order_effect.apply_async((payload["order_id"],), queue=self.queue)


def test_tasks_sent_in_business_transactions_run_once_under_relay_and_worker_kills(
    processes, names, broker_url
):
    """17. Two relays and two workers (Celery's own task consumer, ``acks_late``, with
    ``@exactly_once``), each SIGKILLed three times at random while 400 transactions send
    tasks: every committed order's task has one effect, rolled-back orders' tasks none."""
    queue = f"celery-{names.service}"
    system = System(processes)
    workers = [system.worker(), system.worker()]
    wait_consuming(broker_url, queue, 2)
    producer = TaskProducer(TRANSACTIONS, keys=1, pace=0.02)  # ~10 s: the kills land in it
    producer.queue = queue
    producer.start()
    relays = [system.relay(), system.relay()]
    for _ in range(KILLS):
        for group in (relays, workers):
            time.sleep(random.uniform(0.5, 1.5))
            victim = random.randrange(len(group))
            system.processes.kill(group[victim])
            group[victim] = system.relay() if group is relays else system.worker()
    assert producer.done.wait(240), "the producer did not finish"
    orders = set(Order.objects.values_list("pk", flat=True))
    assert len(orders) >= producer.expected > TRANSACTIONS * 0.8
    wait_until(
        lambda: Effect.objects.filter(consumer="task").count() >= len(orders),
        # Celery's solo workers sometimes idle ~10 s with tasks queued on this machine (plain
        # Celery without Django does too): a wide bound, so that only a lost task fails here.
        timeout=360,
        interval=0.5,
        message=lambda: (
            f"every committed order's task: {describe()}, "
            f"{Effect.objects.filter(consumer='task').count()} of {len(orders)} task effects"
        ),
    )
    time.sleep(2.0)  # a repeated effect, if any, shows up before the books close
    effects = list(Effect.objects.filter(consumer="task").values_list("message_id", flat=True))
    assert len(effects) == len(set(effects)), "a task had more than one effect"
    assert {int(e) for e in effects} == orders, "an effect for an order that never committed"
