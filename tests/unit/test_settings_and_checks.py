"""The settings dict is read at call time and every mistake in it is reported with its fix."""

import re

import pytest

from inbox_outbox.checks import check_settings
from inbox_outbox.conf import get_settings
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
    ],
)
def test_a_bad_value_is_an_error_with_a_hint(settings, override, error):
    settings.INBOX_OUTBOX = {"SERVICE": "billing", **override}
    messages = check_settings()
    assert error in ids(messages)
    assert all(m.hint for m in messages)


def test_a_setting_that_is_not_a_dict_is_an_error_that_shows_the_fix(settings):
    settings.INBOX_OUTBOX = ["SERVICE", "billing"]
    with pytest.raises(ConfigurationError, match=re.escape('INBOX_OUTBOX = {"SERVICE"')):
        get_settings()
    [error] = check_settings()
    assert error.id == "inbox_outbox.E000"
