"""Two workers' batches that share keys never deadlock: progress rows are locked in one order."""

import subprocess
import sys
import time

import pytest
from django.db import connection

from tests.conftest import ROOT, Processes
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def deadlocks() -> int:
    time.sleep(1.5)  # statistics reach pg_stat_database within a second of a transaction's end
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def test_batches_locking_the_same_keys_in_opposite_orders_do_not_deadlock(names, tmp_path):
    rounds, keys = 60, 12
    env = Processes(names, "", tmp_path).env()
    before = deadlocks()
    runners = [
        subprocess.Popen(
            [sys.executable, "tests/batch_runner.py", str(rounds), str(keys), order],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for order in ("asc", "desc")
    ]
    outputs = [runner.communicate(timeout=240)[0] for runner in runners]
    assert [r.returncode for r in runners] == [0, 0], outputs
    assert deadlocks() == before, "two batches deadlocked on their keys' progress rows"
    # Every message had its effect once, whichever runner handled it.
    assert Effect.objects.filter(consumer="effect").count() == rounds * keys
