"""Django's Tasks framework through the outbox (issue 16): ``enqueue()`` inside ``atomic()``
writes an outbox row in the caller's transaction, the relay sends it, a real Celery worker (the
inbox consumer) runs it once in effect; ``get_result()`` reads the state from the database.

Runs on Django 6 (``django.tasks``, ``/work/main/.venv-django6``) and on Django 5.2 with the
``django-tasks`` backport (``django_tasks``); ``inbox_outbox_tasks.compat`` picks which."""

import datetime as dt
import math
import time

import pytest
from django.db import transaction
from django.utils import timezone

from inbox_outbox_tasks.compat import (
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
)
from inbox_outbox_tasks.models import TaskRun
from outbox import operations as outbox_operations
from outbox.models import OutboxMessage
from outbox.relay import Relay
from tests.conftest import wait_until
from tests.integration.test_workers import start_workers
from tests.testapp import django_tasks
from tests.testapp.models import Account, Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

#: Fast retries in the worker, so a failing task reaches its end within the test.
FAST_RETRIES = {
    "INBOX_OUTBOX_INBOX_MAX_ATTEMPTS": "2",
    "INBOX_OUTBOX_INBOX_BACKOFF_BASE": "0.05",
    "INBOX_OUTBOX_INBOX_BACKOFF_MAX": "0.05",
    "INBOX_OUTBOX_INBOX_SWEEP_INTERVAL": "0.2",
}


def _drain() -> int:
    relay = Relay()
    try:
        return relay.drain()
    finally:
        relay.close()


def _state(result_id: str) -> TaskResultStatus:
    return django_tasks.credit.get_backend().get_result(result_id).status


def test_a_task_enqueued_in_a_rolled_back_transaction_never_exists(names):
    with pytest.raises(RuntimeError), transaction.atomic():
        result = django_tasks.credit.enqueue("rolled-back", 5)
        raise RuntimeError("the business change failed")
    assert not OutboxMessage.objects.exists() and not TaskRun.objects.exists()
    with pytest.raises(TaskResultDoesNotExist):
        django_tasks.credit.get_result(result.id)


def test_a_committed_task_runs_once_in_a_real_worker_though_delivered_three_times(
    names, processes, broker_url
):
    start_workers(processes, broker_url, names)
    with transaction.atomic():
        Account.objects.create(name="a")
        result = django_tasks.credit.enqueue("a", 5)
    assert result.status == TaskResultStatus.READY
    assert OutboxMessage.objects.get().id.hex == result.id.replace("-", "")
    _drain()
    wait_until(lambda: _state(result.id) == TaskResultStatus.SUCCESSFUL, timeout=30)
    for _ in range(2):  # the same message, same id, twice more
        outbox_operations.replay(OutboxMessage.objects.filter(id=result.id))
        _drain()
    marker = django_tasks.record.enqueue("after the copies")  # one queue, one worker: FIFO
    _drain()
    wait_until(lambda: _state(marker.id) == TaskResultStatus.SUCCESSFUL, timeout=30)
    assert Account.objects.get(name="a").balance == 5
    signals = set(
        Effect.objects.filter(message_id=marker.id, consumer__startswith="signal:").values_list(
            "consumer", flat=True
        )
    )
    assert signals == {"signal:started:RUNNING", "signal:finished:SUCCESSFUL"}
    done = django_tasks.credit.get_result(result.id)
    assert done.return_value == 5 and done.attempts == 1 and done.errors == []
    assert done.started_at is not None and done.finished_at is not None


def test_run_after_is_honoured_within_a_second_by_a_relay_process(names, processes, broker_url):
    start_workers(processes, broker_url, names)
    relay = processes.relay()
    wait_until(
        lambda: "running" in relay.log_path.read_text(), timeout=30, message="the relay to start"
    )
    due = timezone.now() + dt.timedelta(seconds=3)
    with transaction.atomic():
        result = django_tasks.record.using(run_after=due).enqueue("later")
    time.sleep(2)
    assert not Effect.objects.filter(message_id="later").exists(), "ran before run_after"
    assert _state(result.id) == TaskResultStatus.READY
    wait_until(lambda: _state(result.id) == TaskResultStatus.SUCCESSFUL, timeout=15)
    done = django_tasks.record.get_result(result.id)
    assert done.started_at >= due
    late = (done.started_at - due).total_seconds()
    sent_at = OutboxMessage.objects.get(id=result.id).sent_at
    assert late < 1, (
        f"started {late:.2f}s after run_after: sent {(sent_at - due).total_seconds():.2f}s "
        f"after it, started {(done.started_at - sent_at).total_seconds():.2f}s after sending"
    )
    assert done.return_value == {"label": "later"}


def test_a_failing_task_is_retried_then_failed_with_its_error(names, processes, broker_url):
    start_workers(processes, broker_url, names, **FAST_RETRIES)
    with transaction.atomic():
        result = django_tasks.always_fails.enqueue("x")
    _drain()
    wait_until(lambda: _state(result.id) == TaskResultStatus.FAILED, timeout=30)
    failed = django_tasks.always_fails.get_result(result.id)
    assert failed.attempts == 2
    assert failed.errors[0].exception_class_path == "builtins.ValueError"
    assert failed.errors[0].exception_class is ValueError
    assert "no luck for x" in failed.errors[0].traceback
    assert not Effect.objects.filter(consumer="django-task-failed").exists()  # rolled back
    with pytest.raises(ValueError, match="Task failed"):
        _ = failed.return_value


def test_get_result_shows_running_while_the_task_runs(names, processes, broker_url):
    start_workers(processes, broker_url, names)
    with transaction.atomic():
        result = django_tasks.slow.enqueue(2.0)
    _drain()
    wait_until(lambda: _state(result.id) == TaskResultStatus.RUNNING, timeout=30)
    running = django_tasks.slow.get_result(result.id)
    assert running.attempts == 1 and running.started_at is not None
    wait_until(lambda: _state(result.id) == TaskResultStatus.SUCCESSFUL, timeout=30)


def test_a_task_of_another_queue_is_routed_by_its_queue_name(names, processes, broker_url):
    start_workers(processes, broker_url, names)
    with transaction.atomic():
        result = django_tasks.report.enqueue("r1")
    assert OutboxMessage.objects.get().topic == "django.tasks.reports"
    _drain()
    wait_until(lambda: _state(result.id) == TaskResultStatus.SUCCESSFUL, timeout=30)
    assert Effect.objects.filter(consumer="django-task-report", message_id="r1").count() == 1


def test_a_return_value_that_is_not_json_is_kept_as_none(names, processes, broker_url):
    start_workers(processes, broker_url, names)
    with transaction.atomic():
        result = django_tasks.returns_an_object.enqueue()
    _drain()
    wait_until(lambda: _state(result.id) == TaskResultStatus.SUCCESSFUL, timeout=30)
    assert django_tasks.returns_an_object.get_result(result.id).return_value is None
    assert TaskRun.objects.get(id=result.id).returned_json is False


@pytest.mark.parametrize(
    "args", [(object(), 1), ("a", math.nan), ("a", dt.date(2026, 1, 1)), ({1j: 2}, 1)]
)
def test_an_argument_that_is_not_json_raises_at_enqueue_and_writes_nothing(names, args):
    with pytest.raises(InvalidTask, match="must be JSON"), transaction.atomic():
        django_tasks.credit.enqueue(*args)
    assert not OutboxMessage.objects.exists() and not TaskRun.objects.exists()


def test_task_enqueued_fires_when_the_transaction_commits_not_before(names):
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append(task_result.id)

    task_enqueued.connect(receiver)
    try:
        with transaction.atomic():
            result = django_tasks.record.enqueue("signal")
            assert seen == []
        assert seen == [result.id]
        with pytest.raises(RuntimeError), transaction.atomic():
            django_tasks.record.enqueue("rolled back")
            raise RuntimeError
        assert seen == [result.id]
    finally:
        task_enqueued.disconnect(receiver)


def test_a_priority_is_refused_the_queue_has_none(names):
    with pytest.raises(InvalidTask, match="priority"):
        django_tasks.record.using(priority=10)


def test_a_queue_name_that_cannot_be_a_topic_fails_the_system_check():
    from inbox_outbox_tasks import OutboxTaskBackend

    backend = OutboxTaskBackend("other", {"QUEUES": ["default", "no spaces please"]})
    assert [e.id for e in backend.check()] == ["inbox_outbox_tasks.E001"]
