"""Delayed delivery (issue 16): ``publish(delay=…)`` / ``deliver_at=…`` is sent no earlier than
its due time on the database's clock, by a real relay to a real queue; ``outbox.cancel()``
withdraws it; a delayed keyed message holds its key back; a TTL counts from the due time;
scheduled rows cost the claim nothing and never stall due ones."""

import datetime as dt
import json
import math
import time

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from outbox import PublishError, cancel, publish
from outbox import operations as outbox_operations
from outbox.models import OutboxMessage, Sequence
from outbox.relay import Relay
from tests.conftest import read_queue, wait_until
from tests.integration.test_relay_claim import Records

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _db_seconds(expression: str, message_id) -> float:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT extract(epoch from ({expression})) FROM outbox_message WHERE id = %s",
            [message_id],
        )
        return float(cursor.fetchone()[0])


def _wait_until_due(message_id) -> None:
    """Sleep until the message is due on the database's clock (never the test's)."""
    time.sleep(max(0.0, _db_seconds("available_at - now()", message_id)) + 0.1)


def _drain() -> int:
    relay = Relay()
    try:
        return relay.drain()
    finally:
        relay.close()


def _status(message) -> str:
    return OutboxMessage.objects.get(id=message.id).status


def _skew(monkeypatch, seconds: float) -> None:
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + dt.timedelta(seconds=seconds))


@pytest.mark.parametrize("when", ["delay", "deliver_at"])
def test_a_delayed_message_is_not_sent_before_its_due_time_and_is_sent_after(
    names, bind_queue, broker_url, when
):
    queue = bind_queue("delay.#")
    due = {"delay": 2} if when == "delay" else {"deliver_at": timezone.now() + dt.timedelta(0, 2)}
    message = publish("delay.event", {"n": 1}, **due)
    assert message.status == "scheduled"
    _drain()
    assert read_queue(broker_url, queue, idle=0.3) == []
    assert _status(message) == "scheduled"
    _wait_until_due(message.id)
    _drain()
    delivered = read_queue(broker_url, queue)
    assert [m.properties["message_id"] for m in delivered] == [str(message.id)]
    assert _status(message) == "sent"


@pytest.mark.parametrize("skew", [120, -120])
def test_a_publisher_whose_clock_is_skewed_neither_advances_nor_postpones_the_due_time(
    names, bind_queue, broker_url, monkeypatch, skew
):
    queue = bind_queue("delay.#")
    _skew(monkeypatch, skew)
    message = publish("delay.event", {}, delay=3)
    due_in = _db_seconds("available_at - now()", message.id)
    assert 2 < due_in <= 3, f"due {due_in:.1f}s from the database's now (app clock {skew:+}s)"
    _drain()
    assert read_queue(broker_url, queue, idle=0.3) == [], "sent before its due time"
    _wait_until_due(message.id)
    _drain()
    assert [m.properties["message_id"] for m in read_queue(broker_url, queue)] == [str(message.id)]


def test_a_delayed_keyed_message_holds_its_key_back_until_it_is_sent(names, bind_queue, broker_url):
    queue = bind_queue("delay.#")
    with transaction.atomic():
        first = publish("delay.keyed", {"n": 1}, key="k", delay=2)
        second = publish("delay.keyed", {"n": 2}, key="k")
        other = publish("delay.keyed", {"n": 3}, key="other")
    assert (first.sequence, second.sequence) == (1, 2)  # the sequence is taken at publish
    _drain()
    delivered = read_queue(broker_url, queue, idle=0.3)
    assert [m.properties["message_id"] for m in delivered] == [str(other.id)]
    assert _status(second) == "pending", "a later message of the key passed the delayed one"
    _wait_until_due(first.id)
    _drain()
    delivered = read_queue(broker_url, queue)
    assert [json.loads(m.body)["sequence"] for m in delivered] == ["1", "2"]


def test_cancel_withdraws_a_scheduled_message_for_good(names, bind_queue, broker_url):
    queue = bind_queue("delay.#")
    message = publish("delay.event", {}, delay=1)
    assert cancel(message.id) is True
    row = OutboxMessage.objects.get(id=message.id)
    assert (row.status, row.last_error) == ("cancelled", "cancelled by its producer")
    _wait_until_due(message.id)
    _drain()
    assert read_queue(broker_url, queue, idle=0.3) == []
    assert cancel(message.id) is False  # already cancelled
    assert cancel(str(message.id)) is False


def test_cancel_also_withdraws_a_due_message_no_relay_has_claimed(names):
    message = publish("delay.event", {})
    assert cancel(str(message.id)) is True
    assert _status(message) == "cancelled"


def test_cancel_refuses_a_sent_a_leased_a_failed_an_unknown_message(names, bind_queue):
    bind_queue("delay.#")
    sent = publish("delay.event", {})
    _drain()
    assert _status(sent) == "sent"
    leased = publish("delay.event", {})
    OutboxMessage.objects.filter(id=leased.id).update(
        lease_owner="another relay", lease_until=timezone.now() + dt.timedelta(minutes=1)
    )
    failed = publish("delay.event", {})
    OutboxMessage.objects.filter(id=failed.id).update(status="failed", attempts=1)
    assert [cancel(m.id) for m in (sent, leased, failed)] == [False, False, False]
    assert cancel("0190a3c4-0000-7000-8000-000000000000") is False
    assert cancel("not a uuid") is False
    assert [_status(m) for m in (sent, leased, failed)] == ["sent", "pending", "failed"]


def test_a_cancel_rolled_back_with_its_transaction_cancels_nothing(names):
    message = publish("delay.event", {}, delay=60)
    with pytest.raises(RuntimeError), transaction.atomic():
        assert cancel(message.id) is True
        raise RuntimeError("the business change failed")
    assert _status(message) == "scheduled"


def test_a_cancelled_keyed_message_is_announced_void_and_its_key_goes_on(
    names, bind_queue, broker_url
):
    queue = bind_queue("delay.#")
    with transaction.atomic():
        first = publish("delay.keyed", {"n": 1}, key="k", delay=60)
        second = publish("delay.keyed", {"n": 2}, key="k")
    _drain()
    assert read_queue(broker_url, queue, idle=0.3) == []  # held back behind the scheduled one
    assert cancel(first.id) is True
    _drain()
    bodies = [json.loads(m.body) for m in read_queue(broker_url, queue)]
    assert [(b["sequence"], b.get("voids")) for b in bodies] == [
        ("1", str(first.id)),
        ("2", None),
    ]
    assert bodies[1]["id"] == str(second.id)


def test_a_ttl_counts_from_the_due_time_not_from_publishing(names, bind_queue, broker_url):
    queue = bind_queue("delay.#")
    message = publish("delay.event", {}, delay=1.5, ttl=1)
    assert math.isclose(_db_seconds("expires_at - available_at", message.id), 1.0, abs_tol=0.01)
    at = publish("delay.event", {}, deliver_at=timezone.now() + dt.timedelta(seconds=1.5), ttl=1)
    assert math.isclose(_db_seconds("expires_at - available_at", at.id), 1.0, abs_tol=0.01)
    _wait_until_due(message.id)
    _wait_until_due(at.id)
    _drain()  # 1.5 s after publishing, but within a second of the due time
    delivered = read_queue(broker_url, queue)
    assert {m.properties["message_id"] for m in delivered} == {str(message.id), str(at.id)}
    assert all(int(m.properties["expiration"]) <= 1000 for m in delivered)


def _schedule_many(count: int, *, keyed: bool, due: str) -> None:
    """``count`` scheduled rows in one statement; keyed ones each under their own key of a
    topic that sorts before every other (the claim's walk would meet them first)."""
    key = "'s' || g" if keyed else "NULL"
    seq = "1" if keyed else "NULL"
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO outbox_message (id, topic, key, sequence, epoch, payload, headers, "
            "status, attempts, available_at, lease_owner, created_at, last_error) "
            f"SELECT gen_random_uuid(), 'a.scheduled', {key}, {seq}, {seq}, '{{}}', '{{}}', "
            f"'scheduled', 0, {due}, '', now(), '' FROM generate_series(1, %s) g",
            [count],
        )


def test_thousands_of_scheduled_messages_do_not_stall_the_first_claim_of_due_ones(names):
    _schedule_many(5000, keyed=True, due="now() + interval '1 hour'")
    _schedule_many(5000, keyed=False, due="now() + interval '1 hour'")
    keyed = publish("z.due", {}, key="k")
    keyless = publish("z.due", {})
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=10)
    try:
        relay.run_once()
        assert {m.id for m in publisher.sent} == {keyed.id, keyless.id}
    finally:
        relay.close()
    assert OutboxMessage.objects.filter(status="scheduled").count() == 10_000


def test_a_claim_promotes_at_most_a_thousand_due_scheduled_rows(names):
    _schedule_many(1500, keyed=False, due="now() - interval '1 second'")
    publisher = Records()
    relay = Relay(publisher=publisher, batch_size=100)
    try:
        relay.run_once()
        assert relay.stats["promoted"] == 1000
        assert OutboxMessage.objects.filter(status="scheduled").count() == 500
        relay.drain()
    finally:
        relay.close()
    assert len(publisher.sent) == 1500
    assert OutboxMessage.objects.filter(status="sent").count() == 1500


def test_an_idle_relay_process_wakes_for_a_scheduled_message_within_a_second(
    names, bind_queue, broker_url, processes
):
    """No nudge announces that a scheduled message fell due: an idle relay, polling only
    every 30 s here, must wake for the due time itself."""
    queue = bind_queue("delay.#")
    with transaction.atomic():
        message = publish("delay.event", {}, delay=8)
    relay = processes.relay(INBOX_OUTBOX_NUDGE="false", INBOX_OUTBOX_RELAY_POLL_INTERVAL="30")
    wait_until(
        lambda: "running" in relay.log_path.read_text(), timeout=20, message="the relay to start"
    )
    time.sleep(1)  # it looks, finds nothing due, lingers, and goes idle
    assert _status(message) == "scheduled", "the relay started too late for this test"
    wait_until(lambda: _status(message) == "sent", timeout=12, message="the message to be sent")
    late = _db_seconds("sent_at - available_at", message.id)
    assert 0 <= late < 1, f"sent {late:.2f}s after its due time"
    assert [m.properties["message_id"] for m in read_queue(broker_url, queue)] == [str(message.id)]


def test_an_idle_key_counter_with_a_scheduled_message_is_not_purged(names):
    publish("delay.keyed", {}, key="k", delay=3600)
    Sequence.objects.update(updated_at=timezone.now() - dt.timedelta(days=30))
    assert outbox_operations.purge_idle_sequences(idle_seconds=60) == 0
    assert Sequence.objects.filter(key="k").exists()


def test_outbox_status_counts_scheduled_cancelled_and_when_the_next_falls_due(names, capsys):
    publish("delay.event", {}, delay=100)
    publish("delay.event", {}, delay=200)
    cancel(publish("delay.event", {}, delay=300).id)
    _schedule_many(2, keyed=False, due="now() - interval '1 second'")
    call_command("outbox_status", "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["scheduled"] == 4 and report["counts"]["cancelled"] == 1
    assert report["scheduled_due"] == 2
    assert -3 < report["next_scheduled_in_seconds"] < 0
    OutboxMessage.objects.filter(available_at__lt=timezone.now()).delete()
    call_command("outbox_status")
    text = capsys.readouterr().out
    assert "scheduled=2" in text and "cancelled=1" in text and "scheduled due: 0" in text
    seconds = float(text.split("next scheduled in seconds: ")[1].split()[0])
    assert 98 < seconds <= 100


def test_outbox_status_reports_none_scheduled_as_null(names, capsys):
    call_command("outbox_status", "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["next_scheduled_in_seconds"] is None and report["scheduled_due"] == 0


def test_the_admin_lists_scheduled_messages_with_their_due_time(names, admin_client):
    soon = publish("delay.event", {"n": "soon"}, delay=60)
    later = publish("delay.event", {"n": "later"}, delay=7200)
    now = publish("delay.event", {"n": "now"})
    listing = reverse("admin:outbox_outboxmessage_changelist")
    page = admin_client.get(listing, {"status__exact": "scheduled"})
    assert page.status_code == 200
    assert str(soon.id) in page.text and str(later.id) in page.text and str(now.id) not in page.text
    assert "Scheduled (not due yet): <strong>2</strong>" in page.text
    assert "column-due" in page.text
    within = admin_client.get(listing, {"due": "hour"})
    assert str(soon.id) in within.text and str(later.id) not in within.text
    beyond = admin_client.get(listing, {"due": "later"})
    assert str(later.id) in beyond.text and str(soon.id) not in beyond.text
    detail = admin_client.get(reverse("admin:outbox_outboxmessage_change", args=[soon.id]))
    assert "Scheduled (not due yet)" in detail.text


def test_an_operator_replay_skips_a_cancelled_message(names):
    message = publish("delay.event", {}, delay=60)
    cancel(message.id)
    outcome = outbox_operations.replay(OutboxMessage.objects.filter(id=message.id))
    assert (outcome.done, outcome.skipped) == (0, 1)
    assert _status(message) == "cancelled"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": -1}, "delay must be at least 0 seconds"),
        ({"delay": dt.timedelta(seconds=-5)}, "delay must be at least 0 seconds"),
        ({"delay": math.nan}, "delay must be at least 0 seconds"),
        ({"delay": math.inf}, "delay must be at most"),
        ({"delay": 10**400}, "delay must be at most"),
        ({"delay": True}, "delay must be a timedelta or a number of seconds"),
        ({"delay": "5"}, "delay must be a timedelta or a number of seconds"),
        ({"deliver_at": dt.datetime(2030, 1, 1)}, "deliver_at must be an aware datetime"),
        ({"deliver_at": "2030-01-01T00:00:00Z"}, "deliver_at must be a datetime"),
        ({"delay": 5, "deliver_at": timezone.now()}, "Pass delay or deliver_at, not both"),
        (
            {"deliver_at": dt.datetime.max.replace(tzinfo=dt.UTC), "ttl": 60},
            "past the last datetime",
        ),
    ],
)
def test_publish_refuses_a_nonsense_due_time_and_writes_nothing(names, kwargs, message):
    with pytest.raises(PublishError, match=message), transaction.atomic():
        publish("delay.keyed", {}, key="k", **kwargs)
    assert not OutboxMessage.objects.exists() and not Sequence.objects.exists()


def test_a_zero_delay_or_a_past_deliver_at_is_due_at_once(names):
    zero = publish("delay.event", {}, delay=0)
    past = publish("delay.event", {}, deliver_at=timezone.now() - dt.timedelta(days=1))
    assert zero.status == "pending" and _status(zero) == "pending"
    assert _status(past) == "scheduled"
    publisher = Records()
    relay = Relay(publisher=publisher)
    try:
        relay.drain()
    finally:
        relay.close()
    assert {m.id for m in publisher.sent} == {zero.id, past.id}
