"""Per-stream order (issue 12): a stream is (source, topic, key); positions are (epoch,
sequence); stale positions are kept, not run; void announcements close gaps at once."""

import json

import pytest
from django.db import connection

from inbox.models import InboxMessage, KeyProgress, Status
from inbox.processing import Outcome, retry_due
from inbox.testing import deliver, deliver_outbox
from outbox import publish
from outbox.models import OutboxMessage, Sequence
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def effects():
    return list(
        Effect.objects.filter(consumer="effect").order_by("id").values_list("message_id", flat=True)
    )


def outcome(outcomes):
    """The outcome of the ``effect`` consumer."""
    return next(o for consumer, o in outcomes.items() if consumer.endswith(":effect"))


def send(mid, sequence, *, source="a", epoch=None, key="k"):
    return outcome(
        deliver("test.effect", {}, id=mid, key=key, sequence=sequence, source=source, epoch=epoch)
    )


def status(mid):
    return InboxMessage.objects.get(message_id=mid, consumer__endswith=":effect").status


def test_two_producers_on_one_topic_and_key_keep_each_their_own_order():
    for n in (1, 2, 3):
        assert send(f"a{n}", n, source="a") is Outcome.DONE
    # B's 2 must wait for B's 1 (it ran at once when progress was shared with A's stream).
    assert send("b2", 2, source="b") is Outcome.WAITING
    assert send("b1", 1, source="b") is Outcome.DONE
    # B's 3 runs without waiting for A's 4 (it waited when B's 2 counted as A's).
    assert send("b3", 3, source="b") is Outcome.DONE
    assert effects() == ["a1", "a2", "a3", "b1", "b2", "b3"]
    streams = set(KeyProgress.objects.values_list("source", "last_sequence"))
    assert {("a", 3), ("b", 3)} <= streams


def test_a_stale_sequence_under_a_new_id_is_kept_as_stale_and_not_run():
    assert send("m1", 1) is Outcome.DONE
    assert send("m2", 2) is Outcome.DONE
    assert send("m2-again-under-a-new-id", 2) is Outcome.STALE
    assert effects() == ["m1", "m2"]
    stale = InboxMessage.objects.get(
        message_id="m2-again-under-a-new-id", consumer__endswith=":effect"
    )
    assert stale.status == Status.STALE and "stale" in stale.last_error
    assert stale.raw_body, "kept with its body, so an operator can replay it deliberately"
    assert send("m2-again-under-a-new-id", 2) is Outcome.DUPLICATE  # its redelivery is a no-op
    assert send("m3", 3) is Outcome.DONE


def test_a_restarted_counter_is_a_new_epoch_that_runs_from_1_not_a_stale_stream():
    for n in (1, 2, 3):
        assert send(f"old{n}", n, epoch=100) is Outcome.DONE
    assert send("new1", 1, epoch=200) is Outcome.DONE
    assert send("new3", 3, epoch=200) is Outcome.WAITING
    assert send("new2", 2, epoch=200) is Outcome.DONE
    assert status("new3") == Status.DONE
    assert send("late-old-epoch", 4, epoch=100) is Outcome.STALE
    assert effects() == ["old1", "old2", "old3", "new1", "new2", "new3"]


def test_a_purged_counter_restarts_at_1_in_a_new_epoch_and_the_consumer_follows():
    publish("test.effect", {}, key="order-7")
    publish("test.effect", {}, key="order-7")
    deliver_outbox()
    first_epoch = Sequence.objects.get(key="order-7").epoch
    Sequence.objects.filter(key="order-7").delete()  # what the retention job does when idle
    restarted = publish("test.effect", {}, key="order-7")
    assert restarted.sequence == 1 and restarted.epoch > first_epoch
    deliver_outbox()
    assert OutboxMessage.objects.filter(key="order-7").count() == len(effects()) == 3
    assert status(str(restarted.id)) == Status.DONE


def _void(mid, sequence, voided, *, epoch=None):
    """A void announcement as the relay sends it: the position, and the id it gives up."""
    from inbox.processing import process_delivery
    from inbox_outbox.cloudevents import CONTENT_TYPE

    event = {
        "specversion": "1.0",
        "id": mid,
        "source": "a",
        "type": "test.effect",
        "partitionkey": "k",
        "sequence": str(sequence),
        "voids": voided,
        "data": None,
    }
    if epoch:
        event["sequenceepoch"] = str(epoch)
    return outcome(
        process_delivery(
            json.dumps(event).encode(),
            {"content_type": CONTENT_TYPE, "message_id": mid, "type": "test.effect"},
        )
    )


def test_a_void_announcement_closes_a_gap_at_once_instead_of_after_order_wait():
    assert send("v1", 1) is Outcome.DONE
    assert send("v3", 3) is Outcome.WAITING
    assert _void("void-2", 2, "v2-dead-at-the-producer") is Outcome.VOID
    assert status("v3") == Status.DONE, "the successor ran at once, no ORDER_WAIT_SECONDS"
    assert status("void-2") == Status.VOID
    assert effects() == ["v1", "v3"]


def test_a_void_ahead_of_its_turn_waits_and_never_skips_messages_before_it():
    assert send("w1", 1) is Outcome.DONE
    assert _void("void-3", 3, "w3-expired") is Outcome.WAITING
    assert send("w4", 4) is Outcome.WAITING
    assert effects() == ["w1"], "the void of 3 must not let 4 pass while 2 is missing"
    assert send("w2", 2) is Outcome.DONE
    assert [status(m) for m in ("void-3", "w4")] == [Status.VOID, Status.DONE]
    assert effects() == ["w1", "w2", "w4"]


def test_marking_dead_a_waiting_row_that_is_not_the_head_does_not_advance_progress():
    from inbox.operations import mark_dead

    assert send("d1", 1) is Outcome.DONE
    assert send("d4", 4) is Outcome.WAITING
    mark_dead(InboxMessage.objects.filter(message_id="d4"))
    progress = KeyProgress.objects.get(consumer__endswith=":effect", key="k")
    assert progress.last_sequence == 1, "2 and 3 have not arrived; they must still run"
    assert send("d2", 2) is Outcome.DONE
    assert send("d3", 3) is Outcome.DONE
    # 4's turn has come: the stream passes over the dead row instead of waiting for it.
    send("d5", 5)
    assert status("d5") == Status.DONE
    retry_due()
    assert effects() == ["d1", "d2", "d3", "d5"]


def test_ordering_decisions_have_one_owner():
    """No sequence comparison in the inbox or the kernel outside inbox/ordering.py (the
    issue's one-grep check; the relay's head rule is the outbox's, in outbox/sql.py)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    pattern = re.compile(r"sequence\s*[<>]|[<>]=?\s*\S*sequence|last\s*\+\s*1|sequence__[lg]t")
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for package in ("inbox", "inbox_outbox")
        for path in (root / package).rglob("*.py")
        if "migrations" not in path.parts and path.name != "ordering.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
    assert connection.vendor == "postgresql"


def test_idle_counters_and_progress_are_purged_by_retention_and_the_key_restarts(settings):
    import datetime as dt

    from django.utils import timezone

    from inbox.operations import purge_expired_retention as purge_inbox
    from outbox.operations import purge_expired_retention as purge_outbox

    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "RETENTION_DAYS": 1}
    publish("test.effect", {}, key="idle")
    publish("test.effect", {}, key="busy")
    deliver_outbox()
    publish("test.effect", {}, key="busy")  # unsent: its counter must stay
    long_ago = timezone.now() - dt.timedelta(days=60)
    Sequence.objects.update(updated_at=long_ago)
    KeyProgress.objects.update(updated_at=long_ago)
    purge_outbox()
    purge_inbox()
    assert set(Sequence.objects.values_list("key", flat=True)) == {"busy"}
    assert not KeyProgress.objects.filter(key="idle").exists()
    again = publish("test.effect", {}, key="idle")
    assert again.sequence == 1
    deliver_outbox()
    assert status(str(again.id)) == Status.DONE


def test_outbox_new_epoch_restarts_every_key_at_1_and_consumers_run_it():
    from django.core.management import call_command

    for _ in range(3):
        publish("test.effect", {}, key="restored")
    deliver_outbox()
    before = Sequence.objects.get(key="restored").epoch
    call_command("outbox_new_epoch")
    after = publish("test.effect", {}, key="restored")
    assert after.sequence == 1 and after.epoch > before
    deliver_outbox()
    assert status(str(after.id)) == Status.DONE and len(effects()) == 4


def test_a_keyed_message_marked_dead_at_the_producer_is_announced_void_and_its_successor_runs():
    from outbox.operations import mark_dead

    first = publish("test.effect", {}, key="gap")
    second = publish("test.effect", {}, key="gap")
    third = publish("test.effect", {}, key="gap")
    mark_dead(OutboxMessage.objects.filter(id=second.id))
    announcement = OutboxMessage.objects.get(voids=second.id)
    assert (announcement.key, announcement.sequence, announcement.epoch) == (
        "gap",
        second.sequence,
        second.epoch,
    )
    mark_dead(OutboxMessage.objects.filter(id=second.id))  # again: still one announcement
    assert OutboxMessage.objects.filter(voids=second.id).count() == 1
    deliver_outbox()
    assert status(str(third.id)) == Status.DONE, "no ORDER_WAIT_SECONDS for a known gap"
    assert status(str(announcement.id)) == Status.VOID
    assert effects() == [str(first.id), str(third.id)]


def test_a_message_run_from_its_stored_row_hands_its_handler_its_epoch():
    """A waiting (or retried) row ran with epoch 0: its effect sorted before its predecessors'
    and the fault suite's books saw the key out of order."""
    assert send("e2", 2, epoch=500) is Outcome.WAITING
    assert send("e1", 1, epoch=500) is Outcome.DONE
    assert status("e2") == Status.DONE
    seen = list(
        Effect.objects.filter(consumer="effect").order_by("id").values_list("epoch", "sequence")
    )
    assert seen == [(500, 1), (500, 2)]
