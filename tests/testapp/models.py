"""Business tables the tests' handlers write, so effects can be counted."""

from django.db import models


class Effect(models.Model):
    """One row per handled message: counting them proves exactly-once effects."""

    consumer = models.CharField(max_length=200)
    message_id = models.CharField(max_length=64)
    source = models.CharField(max_length=255, default="")  # the producing service
    key = models.CharField(max_length=255, null=True)
    sequence = models.BigIntegerField(null=True)
    epoch = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)


class Account(models.Model):
    name = models.CharField(max_length=100, unique=True)
    balance = models.IntegerField(default=0)
