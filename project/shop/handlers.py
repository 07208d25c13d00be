"""The example service's inbox handlers (discovered automatically, like admin.py)."""

from inbox import Message, handler

from .models import Shipment


@handler("orders.placed", name="ship-order")
def ship_order(message: Message) -> None:
    """Create the order's shipment; runs once per message however often it is delivered."""
    Shipment.objects.create(order_id=message.data["order_id"], message_id=message.id)
