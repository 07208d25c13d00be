"""Issue 13: nothing an operator does, and no rows of other consumers, can stop the flow or
break a promise: the sweep selects only this service's consumers and walks every stream,
operator actions run a bounded number of handlers, and outbox replays that would do more
than publish again are refused unless asked for by name."""

import datetime as dt
import io

import pytest
from django.core.management import CommandError, call_command
from django.db.models.functions import Now
from django.utils import timezone

from inbox import operations as inbox_ops
from inbox.models import InboxMessage, KeyProgress, Status
from inbox.processing import retry_due
from inbox.testing import deliver
from outbox import ReplayRefused, publish
from outbox import operations as outbox_ops
from outbox.models import OutboxMessage
from outbox.relay import Relay
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def effects():
    return Effect.objects.filter(consumer="effect")


def foreign_rows(n, *, keyed=False, **fields):
    """Rows of a consumer this service does not have (a renamed handler, another service)."""
    long_ago = timezone.now() - dt.timedelta(days=1)
    InboxMessage.objects.bulk_create(
        InboxMessage(
            consumer="elsewhere:gone",
            message_id=f"gone-{i}",
            topic="test.effect",
            payload={},
            received_at=long_ago,
            next_attempt_at=long_ago,
            **({"key": f"k{i}", "sequence": 2, "source": "s"} if keyed else {}),
            **fields,
        )
        for i in range(n)
    )


def test_failed_rows_of_consumers_this_service_lacks_do_not_starve_its_retries(names):
    foreign_rows(600, status=Status.FAILED)
    deliver("test.effect", {"fail_times": 1}, id="ours")
    InboxMessage.objects.filter(message_id="ours").update(next_attempt_at=Now())
    retry_due()
    assert effects().filter(message_id="ours").exists(), "the live handler's retry starved"


def test_waiting_streams_of_consumers_this_service_lacks_do_not_starve_the_sweep(names):
    foreign_rows(600, keyed=True, status=Status.WAITING)  # 600 streams
    deliver("test.effect", {}, id="w2", key="mine", sequence=2, source="s")
    # Its predecessor settled without handing it on (a worker died in between).
    KeyProgress.objects.filter(consumer=f"{names.service}:effect", key="mine").update(
        last_sequence=1
    )
    retry_due()
    assert effects().filter(message_id="w2").exists(), "the sweep never reached the stream"


def test_the_waiting_sweep_walks_on_from_where_its_last_step_stopped(names):
    """Streams still blocked behind a gap (keys a, b) were swept first at every step, so a
    stream whose turn had come (key c) was never reached once they filled the step."""
    for key in ("a", "b", "c"):
        deliver("test.effect", {}, id=f"{key}2", key=key, sequence=2)
    # c's predecessor settled without handing it on (a worker died in between).
    KeyProgress.objects.filter(key="c").update(last_sequence=1)
    for _ in range(3):  # six streams (two consumers, three keys), two per step
        retry_due(limit=2)
    assert list(effects().values_list("key", flat=True)) == ["c"]
    assert set(InboxMessage.objects.waiting().values_list("key", flat=True)) == {"a", "b"}


def test_an_inbox_replay_runs_a_bounded_number_of_handlers_and_leaves_the_rest_to_the_sweep(
    names,
):
    n = inbox_ops.RUN_NOW + 30
    for i in range(n):
        deliver("test.effect", {"do_not_retry": True}, id=f"d{i}")
    dead = InboxMessage.objects.filter(consumer=f"{names.service}:effect", status=Status.DEAD)
    assert dead.count() == n
    # Fixed: the handler no longer declines them.
    InboxMessage.objects.filter(consumer=f"{names.service}:effect").update(payload={})
    outcome = inbox_ops.replay(InboxMessage.objects.filter(consumer=f"{names.service}:effect"))
    assert (outcome.done, outcome.deferred) == (n, 30)
    assert effects().count() == inbox_ops.RUN_NOW
    due = InboxMessage.objects.filter(status=Status.FAILED, next_attempt_at__lte=Now())
    assert due.count() == 30, "the rest is made due for the sweep"
    retry_due()
    assert effects().count() == n


def test_marking_a_head_dead_hands_on_a_bounded_number_of_its_successors(names):
    successors = inbox_ops.RUN_NOW + 20
    for sequence in range(2, successors + 2):
        deliver("test.effect", {}, id=f"s{sequence}", key="long", sequence=sequence)
    deliver("test.effect", {"fail_times": 5}, id="s1", key="long", sequence=1)
    head = InboxMessage.objects.filter(message_id="s1", consumer=f"{names.service}:effect")
    assert head.get().status == Status.FAILED
    inbox_ops.mark_dead(head)
    assert effects().count() == inbox_ops.RUN_NOW
    while InboxMessage.objects.waiting().exists():
        assert retry_due(), "the sweep does not make progress"
    handled = list(effects().order_by("id").values_list("sequence", flat=True))
    assert handled == list(range(2, successors + 2))


def test_inbox_purge_keeps_dead_rows_inside_the_dedup_window_but_not_rejected_ones(names, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "DEDUP_WINDOW_DAYS": 30}
    deliver("test.effect", {"do_not_retry": True}, id="dead")
    deliver("no.handler.for.this", {}, id="nobody")  # rejected
    InboxMessage.objects.update(received_at=timezone.now() - dt.timedelta(days=10))
    assert set(InboxMessage.objects.values_list("status", flat=True)) == {
        "dead",
        "done",
        "rejected",
    }
    call_command("inbox_purge", "--older-than-days", "7", "--include-dead", stdout=io.StringIO())
    # A redelivery of the dead (or processed) message must find its row: it stays.
    assert set(InboxMessage.objects.values_list("status", flat=True)) == {"dead", "done"}


def sent_long_ago(days):
    message = publish("test.effect", {})
    OutboxMessage.objects.filter(id=message.id).update(
        status="sent", sent_at=timezone.now() - dt.timedelta(days=days)
    )
    return OutboxMessage.objects.filter(id=message.id)


def test_replaying_messages_sent_before_the_dedup_window_is_refused_unless_asked(names, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "DEDUP_WINDOW_DAYS": 30}
    old = sent_long_ago(40)
    with pytest.raises(ReplayRefused, match="DEDUP_WINDOW_DAYS"):
        outbox_ops.replay(old)
    assert old.get().status == "sent", "a refused replay changes nothing"
    with pytest.raises(CommandError, match="--past-dedup-window"):
        call_command("outbox_replay", "--id", str(old.get().id), stdout=io.StringIO())
    out = io.StringIO()
    call_command("outbox_replay", "--id", str(old.get().id), "--past-dedup-window", stdout=out)
    assert "replayed 1" in out.getvalue() and old.get().status == "pending"
    recent = sent_long_ago(3)
    assert outbox_ops.replay(recent).done == 1


def test_replaying_an_expired_message_sends_it_only_with_its_expiry_cleared(names, bind_queue):
    bind_queue("test.#")
    message = publish("test.effect", {}, ttl=60)
    expired = OutboxMessage.objects.filter(id=message.id)
    expired.update(status="expired", expires_at=timezone.now() - dt.timedelta(minutes=5))
    with pytest.raises(ReplayRefused, match="--clear-expiry"):
        outbox_ops.replay(expired)
    assert expired.get().status == "expired"
    assert outbox_ops.replay(expired, clear_expiry=True).done == 1
    assert expired.get().expires_at is None
    relay = Relay()
    try:
        relay.drain()
    finally:
        relay.close()
    assert expired.get().status == "sent", "the relay expired it again instead of sending it"


def test_replay_and_mark_dead_leave_rows_a_relay_is_sending_right_now(names):
    message = publish("test.effect", {})
    in_flight = OutboxMessage.objects.filter(id=message.id)
    in_flight.update(
        status="failed", lease_owner="relay-1", lease_until=timezone.now() + dt.timedelta(minutes=1)
    )
    assert outbox_ops.replay(in_flight).skipped == 1
    assert outbox_ops.mark_dead(in_flight).skipped == 1
    assert in_flight.get().lease_owner == "relay-1" and in_flight.get().status == "failed"
