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
