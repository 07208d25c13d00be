"""The settings dict is read at call time and every mistake in it is reported with its fix."""

import re

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings
from hypothesis import given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st

from inbox_outbox.checks import check_broker_url, check_settings, check_time_zone
from inbox_outbox.conf import (
    RULES,
    SERVICE_MAX_LENGTH,
    Settings,
    broker_url,
    broker_url_source,
    broker_urls,
    get_settings,
    problems,
)
from inbox_outbox.exceptions import ConfigurationError

pytestmark = pytest.mark.django_db


def ids(messages):
    return [m.id for m in messages]


def test_settings_follow_override_settings(settings):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", "RELAY_BATCH_SIZE": 7}
    conf = get_settings()
    assert (conf.service, conf.relay_batch_size, conf.queue_name) == ("billing", 7, "billing")
    settings.INBOX_OUTBOX = {"SERVICE": "orders", "QUEUE_PREFIX": "prod."}
    assert get_settings().queue_name == "prod.orders"


def test_defaults_pass_the_checks(settings):
    settings.INBOX_OUTBOX = {"SERVICE": "billing"}
    assert check_settings() == []


def test_an_unknown_key_is_a_warning_naming_it(settings):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", "RELAY_BACTH_SIZE": 5}
    [warning] = check_settings()
    assert warning.id == "inbox_outbox.W001" and "RELAY_BACTH_SIZE" in warning.msg


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"UNROUTABLE": "drop"}, "inbox_outbox.E001"),
        ({"UNKNOWN_TOPIC": "crash"}, "inbox_outbox.E002"),
        ({"SERVICE": ""}, "inbox_outbox.E003"),
        ({"RELAY_BATCH_SIZE": 0}, "inbox_outbox.E004"),
        ({"INBOX_BATCH_SIZE": -1}, "inbox_outbox.E004"),
        ({"PREPARE_STATEMENTS": "yes"}, "inbox_outbox.E006"),
        ({"DEFER_INSERTS": None}, "inbox_outbox.E007"),
        ({"RELAY_LISTEN_DSN": 5432}, "inbox_outbox.E016"),
        ({"RELAY_LISTEN_DSN": ""}, "inbox_outbox.E016"),
        ({"RELAY_LISTEN_DSN": "host=db port"}, "inbox_outbox.E016"),
        ({"QUEUE_TYPE": "stream"}, "inbox_outbox.E017"),
        ({"QUEUE_TYPE": "Quorum"}, "inbox_outbox.E017"),
        ({"DELIVERY_LIMIT": 0}, "inbox_outbox.E004"),
        ({"INBOX_HOLD_SECONDS": -1}, "inbox_outbox.E008"),
    ],
)
def test_a_bad_value_is_an_error_with_a_hint(settings, override, error):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", **override}
    messages = check_settings()
    assert error in ids(messages)
    assert all(m.hint for m in messages)


@pytest.mark.parametrize("dsn", [None, "host=db-primary port=5432", "postgres://db-primary:5432"])
def test_a_listen_dsn_libpq_can_read_is_accepted(settings, dsn):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", "RELAY_LISTEN_DSN": dsn}
    assert check_settings() == []
    assert get_settings().relay_listen_dsn == dsn


def test_a_setting_that_is_not_a_dict_is_an_error_that_shows_the_fix(settings):
    settings.INBOX_OUTBOX = ["SERVICE", "billing"]
    with pytest.raises(ConfigurationError, match=re.escape('INBOX_OUTBOX = {"SERVICE"')):
        get_settings()
    [error] = check_settings()
    assert error.id == "inbox_outbox.E000"


# Issue 13's list of settings that were not reported (or crashed `manage.py check`).
@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"RELAY_CONFIRM_TIMEOUT": "30"}, "inbox_outbox.E008"),
        ({"RELAY_LEASE_SECONDS": None}, "inbox_outbox.E008"),
        ({"RELAY_POLL_INTERVAL": "1"}, "inbox_outbox.E008"),
        ({"NUDGE_INTERVAL": "0.005"}, "inbox_outbox.E008"),
        ({"INBOX_BATCH_DELAY": "0"}, "inbox_outbox.E008"),
        ({"INBOX_SWEEP_INTERVAL": "2"}, "inbox_outbox.E008"),
        ({"ORDER_WAIT_SECONDS": "300"}, "inbox_outbox.E008"),
        ({"RELAY_BACKOFF_BASE": "2"}, "inbox_outbox.E008"),
        ({"INBOX_BACKOFF_MAX": "3600"}, "inbox_outbox.E008"),
        ({"DEDUP_WINDOW_DAYS": "30"}, "inbox_outbox.E008"),
        ({"RETENTION_DAYS": "7"}, "inbox_outbox.E008"),
        ({"REQUIRE_ATOMIC": "no"}, "inbox_outbox.E009"),
        ({"NUDGE": 1}, "inbox_outbox.E009"),
        ({"PREFETCH_COUNT": True}, "inbox_outbox.E004"),
        ({"RELAY_BATCH_SIZE": 2.5}, "inbox_outbox.E004"),
        ({"RELAY_MAX_ATTEMPTS": "12"}, "inbox_outbox.E004"),
        ({"DEDUP_WINDOW_DAYS": -1}, "inbox_outbox.E008"),
        ({"ORDER_WAIT_SECONDS": -5}, "inbox_outbox.E008"),
        ({"RETENTION_DAYS": -1}, "inbox_outbox.E008"),
        ({"INBOX_BATCH_DELAY": -0.1}, "inbox_outbox.E008"),
        ({"NUDGE_INTERVAL": float("nan")}, "inbox_outbox.E008"),
        ({"RELAY_BACKOFF_MAX": float("inf")}, "inbox_outbox.E008"),
        # Past what a timedelta / PostgreSQL integer can hold (10**400 crashed the check).
        ({"RELAY_POLL_INTERVAL": 10**400}, "inbox_outbox.E008"),
        ({"DEDUP_WINDOW_DAYS": 1e300}, "inbox_outbox.E008"),
        ({"RELAY_MAX_ATTEMPTS": 10**30}, "inbox_outbox.E004"),
        ({"EXCHANGE": ""}, "inbox_outbox.E014"),
        ({"EXCHANGE": "events\x00"}, "inbox_outbox.E014"),
        ({"EXCHANGE": "\ud800"}, "inbox_outbox.E014"),
        ({"QUEUE_PREFIX": "p" * 200, "SERVICE": "s" * 100}, "inbox_outbox.E014"),
        ({"SERVICE": "s" * 101}, "inbox_outbox.E003"),
        ({"SERVICE": "billing\n"}, "inbox_outbox.E003"),
        ({"SERVICE": None}, "inbox_outbox.E003"),
        ({"BROKER_URL": ""}, "inbox_outbox.E012"),
        ({"BROKER_URL": 5672}, "inbox_outbox.E012"),
        ({"UNROUTABLE": ["retry"]}, "inbox_outbox.E001"),
    ],
)
def test_a_wrong_type_or_range_is_a_check_error_with_a_hint_not_a_crash(settings, override, error):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", **override}
    messages = check_settings()
    assert error in ids(messages), messages
    [key] = [k for k in override if k != "SERVICE"] or ["SERVICE"]
    assert any(key in m.msg for m in messages)
    assert all(m.hint and m.is_serious() for m in messages)
    with pytest.raises(ConfigurationError):
        get_settings()


@pytest.mark.parametrize("configured", [{}, {"EXCHANGE": "events"}, None])
def test_a_missing_service_is_an_error_not_a_default(settings, configured):
    if configured is None:
        del settings.INBOX_OUTBOX
    else:
        settings.INBOX_OUTBOX = configured
    [error] = check_settings()
    assert error.id == "inbox_outbox.E003" and "SERVICE" in error.msg
    assert "share a queue" in error.hint
    with pytest.raises(ConfigurationError, match="SERVICE"):
        get_settings()


def test_the_longest_service_name_leaves_room_in_the_consumer_column():
    from inbox.models import InboxMessage

    column = InboxMessage._meta.get_field("consumer").max_length
    # "<service>:<handler name>": a service of the longest allowed name leaves 99 characters.
    assert column - SERVICE_MAX_LENGTH - len(":") == 99


@pytest.mark.parametrize(
    "override", [{"RELAY_CONFIRM_TIMEOUT": "30"}, {"RELAY_LEASE_SECONDS": None}]
)
def test_manage_py_check_reports_a_string_or_none_interval_instead_of_crashing(settings, override):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", **override}
    with pytest.raises(SystemCheckError, match=r"inbox_outbox\.E008.*RELAY_"):
        call_command("check")


def test_use_tz_false_is_refused_by_a_check_that_says_why(settings):
    settings.USE_TZ = False
    [error] = check_time_zone()
    assert error.id == "inbox_outbox.E013" and "USE_TZ = True" in error.msg
    assert "database's clock" in error.hint
    settings.USE_TZ = True
    assert check_time_zone() == []


_ANY_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**1100), max_value=2**1100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=()))
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()))
    | st.binary()
    | st.sampled_from(["retry", "dead", "ignore", "reject", "billing", "amqp://x//", "30", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=5,
)
_ANY_KEY = st.sampled_from(sorted(RULES)).flatmap(
    lambda name: st.sampled_from([name.upper(), name, name.title()])
)


@settings_profile(max_examples=400, deadline=None, database=None)
@given(
    st.dictionaries(_ANY_KEY | st.text(max_size=8) | st.integers(), _ANY_VALUE, max_size=8)
    | _ANY_VALUE
)
def test_any_value_of_any_key_is_either_accepted_or_reported_never_a_crash(user):
    with override_settings(INBOX_OUTBOX=user):
        found = problems()
        check_settings()
        try:
            conf = get_settings()
        except ConfigurationError:
            assert found, "get_settings() refused what the checks accept"
        else:
            assert found == [], "get_settings() accepted what the checks report"
            assert isinstance(conf, Settings)
            for name, (rule, _) in RULES.items():
                assert rule(getattr(conf, name)) is None


@pytest.mark.parametrize("key", sorted(RULES))
@settings_profile(max_examples=60, deadline=None, database=None)
@given(value=_ANY_VALUE)
def test_any_value_of_each_key_is_either_accepted_or_reported(key, value):
    with override_settings(INBOX_OUTBOX={"SERVICE": "billing", key.upper(): value}):
        found = problems()
        try:
            conf = get_settings()
        except ConfigurationError:
            assert found
        else:
            assert found == [] and RULES[key][0](getattr(conf, key)) is None


def test_the_broker_url_comes_from_inbox_outbox_then_celery_broker_url(settings):
    settings.CELERY_BROKER_URL = "amqp://celery-setting//"
    settings.INBOX_OUTBOX = {"SERVICE": "billing"}
    assert broker_url_source() == (("amqp://celery-setting//",), "settings.CELERY_BROKER_URL")
    settings.INBOX_OUTBOX = {"SERVICE": "billing", "BROKER_URL": "amqp://ours//"}
    assert broker_url() == "amqp://ours//"
    assert check_broker_url() == []


@pytest.mark.parametrize(
    "value",
    [
        "amqp://a:5701//;amqp://b:5702//",
        " amqp://a:5701// ; amqp://b:5702// ",
        ["amqp://a:5701//", "amqp://b:5702//"],
        ("amqp://a:5701//;amqp://b:5702//",),
    ],
)
def test_a_cluster_s_nodes_are_one_broker_url_list_separated_by_semicolons_or_a_list(
    settings, value
):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", "BROKER_URL": value}
    assert broker_urls() == ("amqp://a:5701//", "amqp://b:5702//")
    assert broker_url() == "amqp://a:5701//;amqp://b:5702//"  # kombu's and Celery's form
    assert check_settings() + check_broker_url() == []
    # The same list from Celery's setting (Celery takes a list or a ';' string too).
    settings.INBOX_OUTBOX = {"SERVICE": "billing"}
    settings.CELERY_BROKER_URL = value
    assert broker_urls() == ("amqp://a:5701//", "amqp://b:5702//")


@pytest.mark.parametrize(
    ("wrong", "said"),
    [
        ("amqp://a//;", "is not one"),
        ("amqp://a//;b:5672", "is not one"),
        ([], "a list of them"),
        (["amqp://a//", 5672], "a list of them"),
        ("amqp://a//;redis://b//", "mixes transports (amqp, redis)"),
    ],
)
def test_a_broker_url_list_with_a_bad_node_is_refused_by_the_check(settings, wrong, said):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", "BROKER_URL": wrong}
    [error] = [e for e in check_settings() if e.id == "inbox_outbox.E012"]
    assert said in error.msg
    with pytest.raises(ConfigurationError, match=re.escape(said)):
        broker_urls()
    if not wrong:
        return  # an empty Celery setting is an unset one
    # A Celery setting as bad is no broker at all, not its first node.
    settings.INBOX_OUTBOX = {"SERVICE": "billing"}
    settings.CELERY_BROKER_URL = wrong
    [error] = check_broker_url()
    assert error.id == "inbox_outbox.E011" and said in error.msg


@pytest.mark.parametrize("wrong", ["", "  ", 5672, ["amqp://a//", None]])
def test_a_broken_broker_url_setting_is_not_replaced_by_celery_s(settings, wrong):
    settings.CELERY_BROKER_URL = "amqp://celery-setting//"
    settings.INBOX_OUTBOX = {"SERVICE": "billing", "BROKER_URL": wrong}
    with pytest.raises(ConfigurationError, match=re.escape('INBOX_OUTBOX["BROKER_URL"]')):
        broker_url()
    assert {"inbox_outbox.E011", "inbox_outbox.E012"} <= set(
        ids(check_settings() + check_broker_url())
    )


def test_a_key_given_twice_in_different_case_is_an_error_not_a_coin_toss(settings):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", "service": 5}
    [error] = check_settings()
    assert error.id == "inbox_outbox.E015" and "'SERVICE'" in error.msg and "'service'" in error.msg
    with pytest.raises(ConfigurationError):
        get_settings()


def test_a_database_behind_a_transaction_pooler_without_a_listen_dsn_is_a_warning(
    settings, monkeypatch
):
    from django.db import connection

    from outbox.checks import check_listener

    settings.INBOX_OUTBOX = {"SERVICE": "billing"}
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", False)
    assert check_listener() == []
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    [warning] = check_listener()
    assert warning.id == "inbox_outbox.W002" and "RELAY_LISTEN_DSN" in warning.hint
    settings.INBOX_OUTBOX = {"SERVICE": "billing", "RELAY_LISTEN_DSN": "host=db port=5432"}
    assert check_listener() == []


def test_a_queue_type_the_library_does_not_know_says_which_ones_it_does_and_how_to_move(settings):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", "QUEUE_TYPE": "stream"}
    [error] = check_settings()
    assert "classic, quorum" in error.msg
    assert "docs/operations.md" in error.hint


def test_a_quorum_queue_name_leaves_room_for_its_dead_letter_queue(settings):
    settings.INBOX_OUTBOX = {"SERVICE": "b", "QUEUE_PREFIX": "p" * 250, "QUEUE_TYPE": "quorum"}
    [error] = check_settings()
    assert error.id == "inbox_outbox.E014" and ".dead-letter" in error.msg
    settings.INBOX_OUTBOX = {"SERVICE": "b", "QUEUE_PREFIX": "p" * 250}
    assert check_settings() == []


@pytest.mark.parametrize(
    ("prefetch", "concurrency", "batch", "lane_batch"),
    [(100, 1, 50, 50), (100, 8, 50, 12), (100, 8, 5, 5), (4, 8, 50, 1), (1000, 4, 50, 50)],
)
def test_a_lane_takes_at_most_its_share_of_the_prefetch(
    settings, prefetch, concurrency, batch, lane_batch
):
    settings.INBOX_OUTBOX = {
        **settings.INBOX_OUTBOX,
        "PREFETCH_COUNT": prefetch,
        "INBOX_CONCURRENCY": concurrency,
        "INBOX_BATCH_SIZE": batch,
    }
    assert get_settings().inbox_lane_batch == lane_batch


def test_more_lanes_than_prefetched_deliveries_is_a_warning_that_says_what_to_raise(settings):
    from inbox.checks import check_concurrency

    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "PREFETCH_COUNT": 4, "INBOX_CONCURRENCY": 8}
    [warning] = check_concurrency()
    assert warning.id == "inbox_outbox.W003" and "PREFETCH_COUNT" in warning.hint
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, "PREFETCH_COUNT": 8}
    assert check_concurrency() == []
