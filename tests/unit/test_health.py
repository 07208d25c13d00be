"""Liveness and readiness from loops' beats and standing conditions (inbox_outbox.health)."""

import time

import pytest

from inbox_outbox import health


@pytest.fixture(autouse=True)
def fresh(settings, tmp_path):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "HEALTH_FILE": str(tmp_path / "health")}
    health.reset()
    yield tmp_path / "health"
    health.reset()


def test_a_false_condition_makes_the_process_not_ready_but_leaves_it_live(fresh):
    health.beat("inbox-sweep")
    health.condition("inbox-broker", ok=False, error="broker: connection lost")
    state = health.health()
    assert state.live and not state.ready
    assert state.conditions["inbox-broker"]["error"] == "broker: connection lost"
    health.condition("inbox-broker", ok=True)
    assert health.health().ready


def test_a_condition_does_not_age_into_unliveness_as_a_silent_loop_does(fresh, settings):
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "HEALTH_STALE_AFTER": 0.01}
    health.condition("inbox-broker", ok=True)
    time.sleep(0.05)
    state = health.health()
    assert state.live and state.ready
    health.beat("inbox-sweep")
    time.sleep(0.05)
    assert not health.health().live


def test_the_health_file_is_touched_only_by_a_healthy_beat_of_a_ready_process(fresh):
    health.condition("inbox-broker", ok=False, error="broker: connection lost")
    health.beat("inbox-sweep")
    assert not fresh.exists()
    health.condition("inbox-broker", ok=True)
    health.beat("inbox-sweep")
    assert fresh.exists()


def test_the_file_age_is_infinite_while_the_file_is_missing_and_none_without_one(fresh, settings):
    assert health.file_age_seconds() == float("inf")
    fresh.touch()
    assert 0 <= health.file_age_seconds() < 5
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "HEALTH_FILE": None}
    assert health.file_age_seconds() is None
