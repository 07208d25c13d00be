"""The admin for both apps: read-only lists and details, actions, and their permissions."""

import datetime as dt

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from inbox.models import InboxMessage
from inbox.testing import deliver
from outbox import publish
from outbox.models import OutboxMessage

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

OUTBOX_LIST = "admin:outbox_outboxmessage_changelist"
INBOX_LIST = "admin:inbox_inboxmessage_changelist"


@pytest.fixture
def operator(client):
    user = User.objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def viewer(client):
    """Staff who may look at messages but hold neither the replay nor the purge permission."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_outboxmessage", "view_inboxmessage"])
    )
    client.force_login(user)
    return client


def post_action(client, url, action, ids):
    return client.post(
        reverse(url), {"action": action, "_selected_action": [str(i) for i in ids]}, follow=True
    )


def test_the_outbox_list_filters_searches_and_counts_per_status(operator):
    sent = publish("orders.placed", {"n": 1}, key="c1")
    OutboxMessage.objects.filter(id=sent.id).update(status="sent")
    failed = publish("payments.captured", {"n": 2})
    OutboxMessage.objects.filter(id=failed.id).update(status="failed", last_error="boom")
    page = operator.get(reverse(OUTBOX_LIST), {"status__exact": "failed"})
    assert page.status_code == 200
    assert str(failed.id) in page.text and str(sent.id) not in page.text
    assert "Failed (will retry): <strong>1</strong>" in page.text
    by_topic = operator.get(reverse(OUTBOX_LIST), {"topic": "orders.placed"})
    assert str(sent.id) in by_topic.text and str(failed.id) not in by_topic.text
    assert 'href="?topic=payments.captured"' in by_topic.text  # topics offered as filters
    for term in (str(sent.id), "c1"):
        found = operator.get(reverse(OUTBOX_LIST), {"q": term})
        assert str(sent.id) in found.text and str(failed.id) not in found.text


def test_the_outbox_detail_shows_pretty_json_and_the_error_and_cannot_be_edited(operator):
    message = publish("orders.placed", {"order_id": 7, "items": ["a"]}, headers={"tenant": "x"})
    OutboxMessage.objects.filter(id=message.id).update(last_error="Traceback: it broke")
    page = operator.get(reverse("admin:outbox_outboxmessage_change", args=[message.id]))
    assert page.status_code == 200
    assert '<pre class="inbox-outbox-json">{\n  &quot;items&quot;: [' in page.text
    assert "<pre>Traceback: it broke</pre>" in page.text
    assert 'name="_save"' not in page.text  # read-only
    assert operator.get(reverse("admin:outbox_outboxmessage_add")).status_code == 403


def test_outbox_replay_requeues_with_the_same_id_and_skips_pending_rows(operator):
    dead, pending = publish("t", {}), publish("t", {})
    OutboxMessage.objects.filter(id=dead.id).update(
        status="dead", attempts=12, last_error="gave up"
    )
    page = post_action(operator, OUTBOX_LIST, "replay", [dead.id, pending.id])
    assert (
        "Queued for publishing 1 outbox message. Skipped 1 outbox message that were still "
        "pending or scheduled, are being sent right now, or were cancelled (publish those "
        "again)." in page.text
    )
    row = OutboxMessage.objects.get(id=dead.id)
    assert (row.status, row.attempts, row.last_error) == ("pending", 12, "")


def test_an_outbox_replay_past_the_dedup_window_is_refused_unless_replayed_anyway(operator):
    old = publish("t", {})
    OutboxMessage.objects.filter(id=old.id).update(
        status="sent", sent_at=timezone.now() - dt.timedelta(days=400)
    )
    page = post_action(operator, OUTBOX_LIST, "replay", [old.id])
    assert "Nothing replayed: 1 of the selected messages were sent more than" in page.text
    assert OutboxMessage.objects.get(id=old.id).status == "sent"
    page = post_action(operator, OUTBOX_LIST, "replay_anyway", [old.id])
    assert "Queued for publishing 1 outbox message." in page.text
    assert OutboxMessage.objects.get(id=old.id).status == "pending"


def test_outbox_mark_dead_and_purge_report_what_they_skipped(operator):
    pending, sent = publish("t", {}), publish("t", {})
    OutboxMessage.objects.filter(id=sent.id).update(status="sent")
    page = post_action(operator, OUTBOX_LIST, "mark_dead", [pending.id, sent.id])
    assert "Marked dead 1 outbox message." in page.text
    page = post_action(operator, OUTBOX_LIST, "purge", [pending.id, sent.id])
    assert "Purged 1 outbox message. Skipped 1 outbox message" in page.text
    assert list(OutboxMessage.objects.values_list("id", flat=True)) == [pending.id]


def test_inbox_list_filters_by_status_consumer_and_topic(operator, names):
    deliver("test.effect", {"audit_fails": True}, id="evt-1")
    page = operator.get(reverse(INBOX_LIST), {"status__exact": "failed"})
    assert "evt-1" in page.text and f"{names.service}:audit" in page.text
    consumers = operator.get(reverse(INBOX_LIST), {"consumer": f"{names.service}:effect"})
    assert f"?consumer={names.service}%3Aaudit" in consumers.text
    assert (
        operator.get(reverse(INBOX_LIST), {"topic": "test.effect", "q": "evt-1"}).status_code == 200
    )


def test_inbox_replay_handles_a_failed_message_again_and_shows_it_processed(operator, names):
    deliver("test.effect", {"fail_times": 1}, id="evt-2")
    failed = InboxMessage.objects.get(message_id="evt-2", consumer=f"{names.service}:effect")
    assert failed.status == "failed"
    page = post_action(operator, INBOX_LIST, "replay", [failed.id])
    assert "Replayed 1 inbox message." in page.text
    assert InboxMessage.objects.get(id=failed.id).status == "done"
    detail = operator.get(reverse("admin:inbox_inboxmessage_change", args=[failed.id]))
    assert "Processed" in detail.text


def test_inbox_purge_keeps_rows_inside_the_dedup_window(operator, names):
    deliver("test.effect", {}, id="recent")
    deliver("test.effect", {}, id="old")
    InboxMessage.objects.filter(message_id="old").update(
        received_at=timezone.now() - dt.timedelta(days=90)
    )
    ids = list(InboxMessage.objects.values_list("id", flat=True))
    page = post_action(operator, INBOX_LIST, "purge", ids)
    assert "Purged 2 inbox messages. Skipped 2 inbox messages" in page.text
    assert set(InboxMessage.objects.values_list("message_id", flat=True)) == {"recent"}


def test_staff_without_the_permissions_see_messages_but_no_actions(viewer):
    message = publish("t", {})
    OutboxMessage.objects.filter(id=message.id).update(status="dead")
    page = viewer.get(reverse(OUTBOX_LIST))
    assert page.status_code == 200 and str(message.id) in page.text
    assert 'value="replay"' not in page.text and 'value="purge"' not in page.text


@pytest.mark.parametrize(
    ("url", "action"),
    [
        (OUTBOX_LIST, "replay"),
        (OUTBOX_LIST, "purge"),
        (INBOX_LIST, "replay"),
        (INBOX_LIST, "purge"),
    ],
)
def test_posting_an_action_without_its_permission_changes_nothing(viewer, url, action, names):
    message = publish("t", {})
    OutboxMessage.objects.filter(id=message.id).update(status="sent")
    deliver("test.effect", {"do_not_retry": True}, id="evt-dead")
    before_outbox = list(OutboxMessage.objects.values_list("id", "status"))
    before_inbox = list(InboxMessage.objects.values_list("id", "status"))
    ids = [message.id] if url == OUTBOX_LIST else [r for r, _ in before_inbox]
    viewer.post(reverse(url), {"action": action, "_selected_action": [str(i) for i in ids]})
    assert list(OutboxMessage.objects.values_list("id", "status")) == before_outbox
    assert list(InboxMessage.objects.values_list("id", "status")) == before_inbox


@pytest.mark.parametrize("kind", ["year", "month", "day"])
def test_the_date_hierarchy_periods_match_djangos_own_query(kind):
    from inbox_outbox.adminkit import for_admin

    base = dt.datetime(2025, 12, 30, 23, 30, tzinfo=dt.UTC)
    for offset in (0, 1, 2, 3, 40, 41, 400):  # across days, a month, a year and a DST change
        message = publish("t", {})
        OutboxMessage.objects.filter(id=message.id).update(
            created_at=base + dt.timedelta(hours=offset * 7)
        )
    probing = for_admin(OutboxMessage.objects.all())
    assert list(probing.datetimes("created_at", kind)) == list(
        OutboxMessage.objects.datetimes("created_at", kind)
    )
    failed = probing.filter(status="pending")
    assert list(failed.datetimes("created_at", kind, "DESC")) == list(
        OutboxMessage.objects.filter(status="pending").datetimes("created_at", kind, "DESC")
    )
    assert list(probing.filter(topic="none").datetimes("created_at", kind)) == []
