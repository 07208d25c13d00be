"""Operators' commands against real PostgreSQL: replay, purge (with the dedup guard), status,
retention, and argument validation."""

import datetime as dt
import io
import json
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from inbox.models import InboxMessage
from inbox.processing import Outcome
from inbox.tasks import purge as inbox_retention
from inbox.testing import deliver
from outbox import publish
from outbox.models import OutboxMessage
from outbox.tasks import purge as outbox_retention
from tests.conftest import ROOT, test_database_url
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def aged(queryset, days, field="created_at"):
    queryset.update(**{field: timezone.now() - dt.timedelta(days=days)})


def test_outbox_replay_dry_run_changes_nothing_and_the_real_run_requeues(names):
    dead = publish("t", {})
    OutboxMessage.objects.filter(id=dead.id).update(status="dead")
    assert "would replay 1 message(s)" in run("outbox_replay", "--status", "dead", "--dry-run")
    assert OutboxMessage.objects.get(id=dead.id).status == "dead"
    assert "replayed 1 message(s)" in run("outbox_replay", "--id", str(dead.id))
    assert OutboxMessage.objects.get(id=dead.id).status == "pending"


def test_inbox_replay_selects_by_consumer_and_topic_and_handles_again(names):
    deliver("test.effect", {"audit_fails": True}, id="e1")
    out = run("inbox_replay", "--consumer", f"{names.service}:audit", "--topic", "test.effect")
    assert "replayed 1 message(s)" in out and "failed again" in out  # audit is still down
    assert (
        InboxMessage.objects.get(message_id="e1", consumer=f"{names.service}:audit").attempts == 2
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["outbox_replay"], "Say which messages"),
        (["outbox_replay", "--status", "gone"], "--status takes a comma-separated list"),
        (["outbox_replay", "--since", "yesterday"], "--since must be an ISO 8601"),
        (
            ["inbox_replay", "--since", "2026-02-01", "--until", "2026-01-01"],
            "earlier than --until",
        ),
        (["outbox_replay", "--id", "not-a-uuid"], "--id"),
        (["outbox_purge", "--older-than-days", "-1"], "must not be negative"),
        (["inbox_purge", "--older-than-days", "1", "--batch-size", "0"], "positive integer"),
    ],
)
def test_bad_arguments_are_a_clear_error(names, args, error):
    with pytest.raises(CommandError, match=error):
        run(*args)


def test_a_bad_argument_exits_non_zero_from_the_shell():
    done = subprocess.run(
        [sys.executable, "manage.py", "outbox_purge"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )
    assert done.returncode != 0 and "--older-than-days" in done.stderr


def test_outbox_purge_deletes_old_sent_rows_in_batches_and_never_unsent_ones(names):
    rows = {
        state: [publish("t", {}).id for _ in range(3)]
        for state in ("sent", "pending", "failed", "dead")
    }
    for state, ids in rows.items():
        OutboxMessage.objects.filter(id__in=ids).update(status=state)
    aged(OutboxMessage.objects.all(), 10)
    fresh = publish("t", {})
    OutboxMessage.objects.filter(id=fresh.id).update(status="sent")
    assert "would delete 3" in run("outbox_purge", "--older-than-days", "7", "--dry-run")
    assert OutboxMessage.objects.count() == 13
    assert "deleted 3" in run("outbox_purge", "--older-than-days", "7", "--batch-size", "2")
    assert not OutboxMessage.objects.filter(id__in=rows["sent"]).exists()
    assert OutboxMessage.objects.filter(status__in=["pending", "failed", "dead"]).count() == 9
    assert "deleted 3" in run("outbox_purge", "--older-than-days", "7", "--include-dead")
    assert OutboxMessage.objects.filter(id=fresh.id).exists()


def test_the_dedup_window_guard_keeps_a_purged_too_early_redelivery_a_duplicate(names, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "DEDUP_WINDOW_DAYS": 30}
    deliver("test.effect", {}, id="late")
    aged(InboxMessage.objects.all(), 10, "received_at")
    out = run("inbox_purge", "--older-than-days", "7")
    assert "deleted 0" in out and "dedup window kept" in out
    # The broker redelivers the message after the purge: still recognised, still one effect.
    assert set(deliver("test.effect", {}, id="late").values()) == {Outcome.DUPLICATE}
    assert Effect.objects.filter(consumer="effect", message_id="late").count() == 1
    # Forcing past the guard shows what it protects against: the redelivery runs again.
    assert "deleted 2" in run("inbox_purge", "--older-than-days", "7", "--ignore-dedup-window")
    assert set(deliver("test.effect", {}, id="late").values()) == {Outcome.DONE}
    assert Effect.objects.filter(consumer="effect", message_id="late").count() == 2


def test_inbox_purge_keeps_open_and_dead_rows_unless_told(names, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "DEDUP_WINDOW_DAYS": 1}
    deliver("test.effect", {"do_not_retry": True}, id="dead")  # effect: dead, audit: done
    deliver("test.effect", {}, id="w", key="k", sequence=5)  # waiting
    aged(InboxMessage.objects.all(), 10, "received_at")
    run("inbox_purge", "--older-than-days", "7")
    assert set(InboxMessage.objects.values_list("status", flat=True)) == {"dead", "waiting"}
    run("inbox_purge", "--older-than-days", "7", "--include-dead", "--include-open")
    assert not InboxMessage.objects.exists()


def test_status_reports_counts_age_and_failures_as_json(names):
    publish("orders.placed", {})
    failed = publish("orders.placed", {})
    OutboxMessage.objects.filter(id=failed.id).update(status="failed", available_at=timezone.now())
    deliver("test.effect", {"audit_fails": True}, id="s1")
    outbox = json.loads(run("outbox_status", "--json"))
    assert outbox["counts"]["pending"] == 1 and outbox["counts"]["failed"] == 1
    assert outbox["topics"] == {"orders.placed": {"pending": 1, "failed": 1}}
    assert outbox["oldest_unsent_age_seconds"] >= 0 and outbox["failures_last_hour"] == 1
    inbox = json.loads(run("inbox_status", "--json"))
    assert inbox["counts"]["done"] == 1 and inbox["counts"]["failed"] == 1
    assert inbox["consumers"][f"{names.service}:audit"] == {"failed": 1}
    assert "per consumer:" in run("inbox_status")


def test_retention_is_off_by_default_and_purges_old_rows_when_set(names, settings):
    sent = publish("t", {})
    OutboxMessage.objects.filter(id=sent.id).update(status="sent")
    aged(OutboxMessage.objects.all(), 40)
    deliver("test.effect", {}, id="r1")
    aged(InboxMessage.objects.all(), 40, "received_at")
    assert outbox_retention() == 0 and inbox_retention() == 0
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "RETENTION_DAYS": 14, "DEDUP_WINDOW_DAYS": 30}
    assert outbox_retention() == 1 and inbox_retention() == 2
    assert not OutboxMessage.objects.exists() and not InboxMessage.objects.exists()


def _snapshot():
    return (
        sorted(OutboxMessage.objects.values_list("id", "status", "attempts", "available_at")),
        sorted(InboxMessage.objects.values_list("id", "status", "attempts", "next_attempt_at")),
    )


@pytest.fixture
def old_rows(names):
    """Rows every purge and replay below would touch if its arguments were taken."""
    for state in ("sent", "dead", "failed"):
        OutboxMessage.objects.filter(id=publish("t", {}).id).update(status=state)
    deliver("test.effect", {"do_not_retry": True}, id="old-dead")
    deliver("test.effect", {"audit_fails": True}, id="old-failed")
    aged(OutboxMessage.objects.all(), 400)
    aged(InboxMessage.objects.all(), 400, "received_at")
    return _snapshot()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["outbox_replay", "--since", "2026-13-45"],
            r"--since must be an ISO 8601 date.*2026-13-45",
        ),
        (["inbox_replay", "--since", "2026-13-45"], r"--since must be an ISO 8601 date"),
        # Well-formed but impossible: Django's parse_datetime raises ValueError for these.
        (["outbox_replay", "--since", "2026-02-30T10:00"], r"--since must be an ISO 8601"),
        (["inbox_replay", "--until", "2026-01-01T25:61"], r"--until must be an ISO 8601"),
        (["outbox_replay", "--until", "garbage"], r"--until must be an ISO 8601.*'garbage'"),
        (["inbox_replay", "--until", "garbage"], r"--until must be an ISO 8601"),
        (["outbox_purge", "--older-than-days", "nan"], r"--older-than-days must be a finite"),
        (["outbox_purge", "--older-than-days", "inf"], r"--older-than-days must be a finite"),
        (["inbox_purge", "--older-than-days", "1e308"], r"--older-than-days must be a finite"),
        (["inbox_purge", "--older-than-days=-inf"], r"--older-than-days must not be negative"),
        (["inbox_purge", "--older-than-days", "-1"], r"--older-than-days must not be negative"),
        (["outbox_purge", "--older-than-days", "1", "--batch-size", "0"], r"--batch-size must"),
        (["inbox_purge", "--older-than-days", "1", "--batch-size", "-5"], r"--batch-size must"),
        (["outbox_purge", "--older-than-days", "1", "--batch-size", str(10**30)], r"--batch-size"),
        (["inbox_replay", "--consumer", "bogus"], r"--consumer 'bogus' is neither"),
        (["inbox_replay", "--consumer", "bogus", "--dry-run"], r"--consumer 'bogus' is neither"),
    ],
)
def test_a_bad_argument_is_a_clear_error_and_changes_nothing(old_rows, args, error):
    with pytest.raises(CommandError, match=error):
        run(*args)
    assert _snapshot() == old_rows


def test_an_unknown_consumer_error_names_the_consumers_that_exist(names):
    with pytest.raises(CommandError) as caught:
        run("inbox_replay", "--consumer", f"{names.service}:efect")
    assert f"{names.service}:effect" in str(caught.value)


def test_a_consumer_only_old_rows_have_can_still_be_replayed(names):
    # A renamed handler's rows: no handler has the consumer, but the rows do.
    deliver("test.effect", {"audit_fails": True}, id="renamed")
    InboxMessage.objects.filter(consumer=f"{names.service}:audit").update(consumer="old:audit")
    out = run("inbox_replay", "--consumer", "old:audit", "--dry-run")
    assert "would replay 1 message(s)" in out


@pytest.mark.parametrize(
    "args",
    [
        ["outbox_purge", "--older-than-days", "nan"],
        ["inbox_purge", "--older-than-days", "1e308"],
        ["outbox_replay", "--since", "2026-13-45"],
        ["inbox_replay", "--consumer", "bogus"],
    ],
)
def test_a_bad_argument_is_one_line_and_a_non_zero_exit_from_the_shell(args):
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **__import__("os").environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": test_database_url(),
        },
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("CommandError: ")
