"""Times are compared on the database's clock (issue 12 item 6): an application host whose
clock runs ahead or behind neither delays its messages nor shortens their TTL."""

import datetime as dt

import pytest
from django.db import connection
from django.utils import timezone

from outbox import publish
from outbox.models import OutboxMessage

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _db_seconds(expression, message_id):
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT extract(epoch from ({expression})) FROM outbox_message WHERE id = %s",
            [message_id],
        )
        return float(cursor.fetchone()[0])


@pytest.mark.parametrize("skew", [120, -120])
def test_a_publisher_with_a_skewed_clock_neither_delays_its_message_nor_changes_its_ttl(
    monkeypatch, skew
):
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + dt.timedelta(seconds=skew))
    message = publish("test.effect", {}, ttl=5)
    due_in = _db_seconds("available_at - now()", message.id)
    lives_for = _db_seconds("expires_at - now()", message.id)
    assert -2 < due_in <= 0, f"due {due_in:.1f}s from the database's now (app clock {skew:+}s)"
    assert 3 < lives_for <= 5, f"expires {lives_for:.1f}s from the database's now"
    assert OutboxMessage.objects.filter(id=message.id).exists()


def _skew(monkeypatch, seconds):
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + dt.timedelta(seconds=seconds))


def test_a_failure_recorded_by_a_worker_whose_clock_runs_ahead_is_retried_when_due(
    monkeypatch, settings
):
    from inbox.models import InboxMessage, Status
    from inbox.processing import retry_due
    from inbox.testing import deliver

    settings.INBOX_OUTBOX = {
        **settings.INBOX_OUTBOX,
        "INBOX_BACKOFF_BASE": 0.001,
        "INBOX_BACKOFF_MAX": 0.001,
    }
    with monkeypatch.context() as ahead:  # this worker's clock: two minutes fast
        _skew(ahead, 120)
        deliver("test.effect", {"fail_times": 1}, id="skewed-ahead")
    retry_due()  # another worker's sweep, on a correct clock
    row = InboxMessage.objects.get(message_id="skewed-ahead", consumer__endswith=":effect")
    assert row.status == Status.DONE and row.attempts == 2


def test_a_worker_whose_clock_runs_behind_does_not_force_past_a_gap_early(monkeypatch, settings):
    from inbox.models import InboxMessage, Status
    from inbox.processing import retry_due
    from inbox.testing import deliver

    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "ORDER_WAIT_SECONDS": 60}
    _skew(monkeypatch, -120)  # on this clock, a row stored now would look 2 minutes old
    deliver("test.effect", {}, id="behind-2", key="gap", sequence=2)
    retry_due()
    row = InboxMessage.objects.get(message_id="behind-2", consumer__endswith=":effect")
    assert row.status == Status.WAITING, "forced past the gap after 0 s of real waiting"
