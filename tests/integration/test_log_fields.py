"""Log lines about a message carry its id, topic, key, consumer and attempt as fields (extra=),
at levels that fit: a duplicate is debug, a retryable failure a warning, a dead message an error."""

import logging

import pytest

from inbox.testing import deliver

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def about(caplog, message_id):
    return [r for r in caplog.records if getattr(r, "message_id", None) == message_id]


def test_a_failure_is_a_warning_with_the_messages_fields(caplog):
    caplog.set_level(logging.DEBUG, logger="inbox")
    deliver("test.effect", {"fail_times": 1}, id="m-1", key="k", sequence=1)
    (record,) = [r for r in about(caplog, "m-1") if r.levelno == logging.WARNING]
    assert (record.topic, record.key, record.attempt) == ("test.effect", "k", 1)
    assert record.consumer.endswith(":effect")


def test_a_dead_message_is_an_error_and_a_duplicate_is_debug(caplog):
    caplog.set_level(logging.DEBUG, logger="inbox")
    deliver("test.effect", {"do_not_retry": True}, id="m-2")
    (dead,) = [r for r in about(caplog, "m-2") if r.levelno == logging.ERROR]
    assert dead.consumer.endswith(":effect") and dead.attempt == 1
    caplog.clear()
    deliver("test.effect", {"do_not_retry": True}, id="m-2")
    duplicates = about(caplog, "m-2")
    assert duplicates and all(r.levelno == logging.DEBUG for r in duplicates)


def test_a_rejected_delivery_is_a_warning_with_its_id(caplog):
    from inbox.processing import process_delivery

    process_delivery(b"not json", {"message_id": "m-3", "type": "test.effect"}, {})
    (record,) = about(caplog, "m-3")
    assert record.levelno == logging.WARNING and record.topic == "test.effect"


def test_no_payload_is_logged(caplog):
    caplog.set_level(logging.DEBUG)
    deliver("test.effect", {"do_not_retry": True, "secret": "hunter2"}, id="m-4")
    assert "hunter2" not in caplog.text
