"""The benchmark's handler: one business insert per message."""

from inbox import Message, handler
from tests.testapp.models import Effect


@handler("bench.consume", name="bench")
def bench(message: Message) -> None:
    Effect.objects.create(consumer="bench", message_id=message.id)
