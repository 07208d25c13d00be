"""The standalone projects' one handler. It imports only the inbox: the inbox-only project
must run without the outbox app."""

from inbox import Message, handler

from .models import Greeting


@handler("standalone.greeted", name="greet")
def greet(message: Message) -> None:
    Greeting.objects.create(message_id=message.id, name=message.data["name"])
