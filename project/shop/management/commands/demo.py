"""``manage.py demo``: publish in a transaction, relay to the broker, consume exactly once.

Runs everything in one process so that it works on kombu's in-memory transport with
no server at all; with ``DATABASE_URL``/``CELERY_BROKER_URL`` pointing at PostgreSQL
and RabbitMQ it goes through the real services unchanged.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from inbox.consumer import QueueConsumer
from inbox.models import InboxMessage
from inbox_outbox.conf import broker_url
from outbox import publish
from outbox.models import OutboxMessage
from outbox.relay import Relay
from project.shop.models import Order, Shipment


class Rollback(Exception):
    pass


class Command(BaseCommand):
    help = "Show the outbox and inbox at work: one command, no services needed."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--orders", type=int, default=5)

    def handle(self, *args: Any, orders: int, **options: Any) -> None:
        out = self.stdout.write
        consumer = QueueConsumer()
        consumer.declare()  # the queue must exist before anything is published to it
        out(f"broker: {consumer.connection.as_uri()}  (CELERY_BROKER_URL={broker_url()})")
        out(f"database: {Order.objects.db} / {transaction.get_connection().vendor}")
        before = Shipment.objects.count()

        out(f"\n1. Placing {orders} orders, each with outbox.publish() in the same transaction,")
        out("   and one more whose transaction rolls back:")
        placed = []
        for i in range(orders):
            with transaction.atomic():
                order = Order.objects.create(customer=f"customer-{i}", amount=Decimal("9.99") + i)
                publish(
                    "orders.placed",
                    {"order_id": order.pk, "amount": order.amount},
                    key=order.customer,
                )
            placed.append(order.pk)
        try:
            with transaction.atomic():
                order = Order.objects.create(customer="rolled-back", amount=Decimal("1.00"))
                publish("orders.placed", {"order_id": order.pk})
                raise Rollback
        except Rollback:
            pass
        pending = OutboxMessage.objects.unsent().count()
        out(f"   outbox: {pending} pending row(s) (the rolled-back order published nothing)")

        out("\n2. The relay publishes them to the broker and marks them sent:")
        relay = Relay()
        relay.drain()
        relay.close()
        out(f"   relay: {dict(relay.stats)}")

        out("\n3. The consumer handles each message in one transaction with its inbox row:")
        handled = consumer.drain(idle_timeout=1.0)
        shipments = Shipment.objects.count() - before
        out(f"   consumed {handled} message(s); shipments created: {shipments}")

        out("\n4. The broker delivers every message again (at-least-once):")
        ids = list(
            OutboxMessage.objects.sent()
            .filter(payload__order_id__in=placed)
            .values_list("id", flat=True)
        )
        OutboxMessage.objects.filter(id__in=ids).update(status="pending")
        relay = Relay()
        relay.drain()
        relay.close()
        handled = consumer.drain(idle_timeout=1.0)
        again = Shipment.objects.count() - before
        out(f"   consumed {handled} duplicate(s); shipments now: {again} (unchanged: exactly once)")
        consumer.close()

        processed = InboxMessage.objects.done().filter(topic="orders.placed").count()
        out(f"\ninbox: {processed} processed row(s) for orders.placed")
        ok = shipments == orders and again == orders
        out(
            self.style.SUCCESS("demo OK: every order shipped exactly once")
            if ok
            else self.style.ERROR("demo FAILED: effects do not match the orders")
        )
        if not ok:
            raise SystemExit(1)
