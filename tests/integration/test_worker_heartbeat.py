"""No handler, however slow, keeps a worker's broker connection from heartbeating, and a slow
key does not hold back the others."""

import time

import pytest

from inbox.models import InboxMessage
from tests.conftest import wait_until
from tests.integration.test_workers import Sender, start_workers
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

HEARTBEAT = 2  # seconds; RabbitMQ closes a connection that misses two
SLOW = HEARTBEAT * 4


@pytest.fixture
def sender(names):
    s = Sender(names)
    yield s
    s.close()


def test_a_handler_slower_than_two_heartbeats_is_handled_once_while_other_keys_flow(
    processes, broker_url, names, sender
):
    [worker] = start_workers(
        processes,
        broker_url,
        names,
        CELERY_BROKER_HEARTBEAT=str(HEARTBEAT),
        INBOX_OUTBOX_INBOX_CONCURRENCY="4",
    )
    slow = sender.event("test.effect", {"sleep": SLOW}, key="slow", sequence=1)
    time.sleep(0.5)  # the slow handler has started
    sent_at = time.monotonic()
    quick = [sender.event("test.effect", {}, key=f"quick{n}", sequence=1) for n in range(12)]

    # The other keys are handled while the slow one still runs.
    wait_until(
        lambda: Effect.objects.filter(consumer="effect", message_id__in=quick).count() == 12,
        timeout=SLOW - 2,
        message="the other keys' effects while the slow handler runs",
    )
    assert time.monotonic() - sent_at < SLOW - 2
    assert not Effect.objects.filter(consumer="effect", message_id=slow).exists()

    wait_until(
        lambda: Effect.objects.filter(consumer="effect", message_id=slow).exists(),
        timeout=SLOW * 2,
        message="the slow message's effect",
    )
    time.sleep(HEARTBEAT * 2)  # a redelivery, had the connection dropped, would show now
    assert Effect.objects.filter(consumer="effect", message_id=slow).count() == 1
    row = InboxMessage.objects.get(message_id=slow, consumer__endswith=":effect")
    assert (row.status, row.attempts) == ("done", 1)
    log = worker.log_path.read_text()
    assert "Connection to broker lost" not in log, log[-2000:]
    assert worker.poll() is None
