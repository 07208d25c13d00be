"""Inbox semantics, in process against real PostgreSQL: retries, dead letters, ordering,
consumer isolation and the test helpers users get."""

import datetime as dt

import pytest
from django.utils import timezone

from inbox.models import InboxMessage, KeyProgress
from inbox.processing import Outcome, retry_due
from inbox.testing import deliver, deliver_outbox
from outbox import publish
from outbox.models import OutboxMessage
from tests.testapp.models import Account, Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fast_retries(settings, names):
    settings.INBOX_OUTBOX = {
        **settings.INBOX_OUTBOX,
        "INBOX_BACKOFF_BASE": 0.001,
        "INBOX_BACKOFF_MAX": 0.001,
    }


def effects(consumer="effect"):
    return list(
        Effect.objects.filter(consumer=consumer).order_by("id").values_list("message_id", flat=True)
    )


def row(message_id, consumer="effect"):
    return InboxMessage.objects.get(message_id=message_id, consumer__endswith=f":{consumer}")


def test_a_duplicate_is_reported_and_changes_nothing():
    assert set(deliver("test.effect", {}, id="m1").values()) == {Outcome.DONE}
    outcomes = deliver("test.effect", {}, id="m1")
    assert set(outcomes.values()) == {Outcome.DUPLICATE}
    assert effects() == ["m1"] and effects("audit") == ["m1"]


def test_one_consumer_failing_never_rolls_back_the_other():
    outcomes = deliver("test.effect", {"audit_fails": True}, id="m2")
    assert sorted(o.value for o in outcomes.values()) == ["done", "failed"]
    assert effects() == ["m2"] and effects("audit") == []
    assert (
        row("m2", "audit").status == "failed" and "audit is down" in row("m2", "audit").last_error
    )


def test_a_failing_handler_is_retried_with_its_error_kept_and_succeeds_on_the_third_attempt():
    deliver("test.effect", {"fail_times": 2}, id="flaky")
    assert row("flaky").status == "failed" and row("flaky").attempts == 1
    assert "Traceback" in row("flaky").traceback
    retry_due()
    assert row("flaky").status == "failed" and row("flaky").attempts == 2
    retry_due()
    assert row("flaky").status == "done" and row("flaky").attempts == 3
    assert effects() == ["flaky"]


def test_a_message_that_always_fails_ends_dead_after_max_attempts(settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "INBOX_MAX_ATTEMPTS": 3}
    deliver("test.effect", {"poison": True}, id="doomed")
    retry_due()
    retry_due()
    assert row("doomed").status == "dead" and row("doomed").attempts == 3
    retry_due()
    assert row("doomed").attempts == 3 and effects() == []


def test_do_not_retry_marks_dead_at_once_and_retry_after_sets_the_next_attempt():
    deliver("test.effect", {"do_not_retry": True}, id="declined")
    assert row("declined").status == "dead" and row("declined").attempts == 1
    before = timezone.now()
    deliver("test.effect", {"retry_after": 120}, id="later")
    later = row("later")
    assert later.status == "failed"
    assert dt.timedelta(seconds=119) < later.next_attempt_at - before < dt.timedelta(seconds=122)
    retry_due()
    assert row("later").status == "failed"  # not due yet


def test_keyed_messages_arriving_out_of_order_are_handled_in_sequence():
    assert set(deliver("test.effect", {}, id="s3", key="acct", sequence=3).values()) == {
        Outcome.WAITING
    }
    deliver("test.effect", {}, id="s1", key="acct", sequence=1)
    assert effects() == ["s1"] and row("s3").status == "waiting"
    deliver("test.effect", {}, id="s2", key="acct", sequence=2)
    assert effects() == ["s1", "s2", "s3"]
    assert KeyProgress.objects.get(consumer__endswith=":effect", key="acct").last_sequence == 3


def test_a_failing_message_holds_back_only_its_own_key():
    deliver("test.effect", {"fail_times": 1}, id="a1", key="a", sequence=1)
    deliver("test.effect", {}, id="a2", key="a", sequence=2)
    deliver("test.effect", {}, id="b1", key="b", sequence=1)
    assert effects() == ["b1"] and row("a2").status == "waiting"
    retry_due()
    assert effects() == ["b1", "a1", "a2"]


def test_a_dead_head_unblocks_its_key(settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "INBOX_MAX_ATTEMPTS": 2}
    deliver("test.effect", {"poison": True}, id="h1", key="h", sequence=1)
    deliver("test.effect", {}, id="h2", key="h", sequence=2)
    retry_due()
    assert row("h1").status == "dead"
    assert effects() == ["h2"]


def test_a_gap_that_never_closes_is_skipped_after_the_order_wait(settings):
    deliver("test.effect", {}, id="g5", key="g", sequence=5)
    retry_due()
    assert row("g5").status == "waiting"
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "ORDER_WAIT_SECONDS": 0}
    retry_due()
    assert effects() == ["g5"]


def test_a_redelivered_message_whose_handler_publishes_writes_one_outgoing_row():
    for _ in range(3):
        deliver("test.transfer", {"account": "erin", "amount": 4}, id="transfer-1")
    assert Account.objects.get(name="erin").balance == 4
    assert OutboxMessage.objects.filter(topic="test.transferred").count() == 1


def test_deliver_outbox_runs_a_publish_through_the_inbox_and_marks_it_sent():
    message = publish("test.effect", {"via": "outbox"})
    [outcomes] = deliver_outbox()
    assert set(outcomes.values()) == {Outcome.DONE}
    assert effects() == [str(message.id)]
    assert OutboxMessage.objects.get(id=message.id).status == "sent"


def test_a_key_stranded_by_a_crash_between_commit_and_drain_heals_on_the_next_arrival(monkeypatch):
    from inbox import processing

    deliver("test.effect", {}, id="x2", key="x", sequence=2)
    with monkeypatch.context() as crash:  # the worker dies after committing x1, before draining
        crash.setattr(processing, "drain_stream", lambda *args, **kwargs: 0)
        deliver("test.effect", {}, id="x1", key="x", sequence=1)
    assert effects() == ["x1"] and row("x2").status == "waiting"
    deliver("test.effect", {}, id="x3", key="x", sequence=3)
    assert effects() == ["x1", "x2", "x3"]
