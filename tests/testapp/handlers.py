"""Handlers the test suite delivers to. Their behaviour is steered by the payload."""

import os
import time

from inbox import DoNotRetry, Message, RetryAfter, handler
from outbox import publish

from .models import Account, Effect


@handler("test.effect", name="effect")
def record_effect(message: Message) -> None:
    """One Effect row per handled message; payload flags make it fail or sleep on purpose."""
    data = message.data if isinstance(message.data, dict) else {}
    if data.get("sleep"):
        time.sleep(float(data["sleep"]))
    if data.get("crash_marker") and os.path.exists(data["crash_marker"]):
        os.remove(data["crash_marker"])
        os._exit(9)  # simulate a worker killed inside the handler
    if message.attempt <= int(data.get("fail_times", 0)):
        raise RuntimeError(f"failing on purpose, attempt {message.attempt}")
    if data.get("poison"):
        raise ValueError("this message can never succeed")
    if data.get("do_not_retry"):
        raise DoNotRetry("declined")
    if data.get("retry_after") and message.attempt == 1:
        raise RetryAfter(float(data["retry_after"]))
    Effect.objects.create(
        consumer="effect",
        message_id=message.id,
        source=message.source,
        key=message.key,
        sequence=message.sequence,
        epoch=message.epoch,
    )


@handler("test.effect", name="audit")
def audit(message: Message) -> None:
    """A second consumer of the same topic: its own dedup record and its own failures."""
    data = message.data if isinstance(message.data, dict) else {}
    if data.get("audit_fails"):
        raise RuntimeError("audit is down")
    Effect.objects.create(consumer="audit", message_id=message.id)


@handler("test.transfer", name="transfer")
def transfer(message: Message) -> None:
    """Moves money and publishes a follow-up message in the same transaction."""
    account, _ = Account.objects.get_or_create(name=message.data["account"])
    account.balance += int(message.data["amount"])
    account.save(update_fields=["balance"])
    publish(
        "test.transferred", {"account": account.name, "balance": account.balance}, key=account.name
    )


@handler("test.fuzz", name="fuzz")
def fuzz(message: Message) -> None:
    """The property tests' consumer: its inbox row is the whole proof that it ran."""


@handler("test.traced", name="traced")
def traced(message: Message) -> None:
    """Does its work in a span of its own, which must nest in the inbox's process span."""
    from opentelemetry import trace  # only the tracing tests send this topic

    with trace.get_tracer("tests.testapp").start_as_current_span("handler work"):
        Effect.objects.create(consumer="traced", message_id=message.id)
