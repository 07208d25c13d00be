"""The benchmark's handlers: one business insert per message, and an I/O-bound one."""

import time

from inbox import Message, handler
from tests.testapp.models import Effect

#: How long the I/O-bound handler waits, as a call to another service would.
IO_SECONDS = 0.010


@handler("bench.consume", name="bench")
def bench(message: Message) -> None:
    Effect.objects.create(consumer="bench", message_id=message.id)


@handler("bench.io", name="bench-io")
def bench_io(message: Message) -> None:
    """Waits 10 ms, then records its position: the rows show the order each key ran in."""
    time.sleep(IO_SECONDS)
    Effect.objects.create(
        consumer="bench-io", message_id=message.id, key=message.key, sequence=message.sequence
    )
