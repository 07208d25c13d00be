"""outbox_status --check / inbox_status --check: exit status 2 when a threshold is crossed."""

import os
import re
import subprocess
import sys
import time

import pytest
from django.db import transaction

from inbox.testing import deliver
from outbox import publish
from tests.conftest import ROOT, test_database_url

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def run(*args):
    env = {"DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": test_database_url()}
    import os

    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_outbox_status_check_fails_when_the_backlog_is_over_its_limit_and_passes_under_it():
    with transaction.atomic():
        for n in range(3):
            publish("test.effect", {"n": n})
    over = run("outbox_status", "--check", "--max-unsent", "2", "--max-age", "3600")
    assert over.returncode == 2, over.stdout + over.stderr
    assert "CROSSED  outbox_unsent_messages = 3 (limit 2)" in over.stdout
    under = run("outbox_status", "--check", "--max-unsent", "3", "--max-dead", "0")
    assert under.returncode == 0, under.stdout + under.stderr


def test_inbox_status_check_fails_on_dead_messages():
    deliver("test.effect", {"do_not_retry": True})
    crossed = run("inbox_status", "--check", "--max-dead", "0")
    assert crossed.returncode == 2, crossed.stdout + crossed.stderr
    assert "inbox_dead_messages = 1" in crossed.stdout
    assert run("inbox_status", "--check", "--max-dead", "1").returncode == 0


def test_a_health_file_older_than_allowed_or_missing_fails_the_check(tmp_path):
    health_file = tmp_path / "worker.health"
    setting = {"INBOX_OUTBOX_HEALTH_FILE": f'"{health_file}"'}

    def check(limit):
        return subprocess.run(
            [sys.executable, "manage.py", "inbox_status", "--check", "--max-health-age", limit],
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "DATABASE_URL": test_database_url(),
                **setting,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = check("60")
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "health_file_age_seconds = missing" in missing.stdout
    health_file.touch()
    fresh = check("60")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    stale = time.time() - 120
    os.utime(health_file, (stale, stale))  # a process that stopped being ready 2 minutes ago
    old = check("60")
    assert old.returncode == 2, old.stdout + old.stderr
    (age,) = re.findall(r"CROSSED  health_file_age_seconds = (\d+) \(limit 60\)", old.stdout)
    assert 120 <= int(age) < 180  # its age then, plus this command's start
