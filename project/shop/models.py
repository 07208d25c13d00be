"""The example service's business tables."""

from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=100)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order {self.pk} ({self.customer}, {self.amount})"


class Shipment(models.Model):
    """Written by the inbox handler of ``orders.placed``: one per order, exactly once."""

    order_id = models.BigIntegerField()
    message_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"shipment for order {self.order_id}"
