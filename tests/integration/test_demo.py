"""The README's demo works with no services at all, and unchanged against the real ones."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, test_database_url

pytestmark = pytest.mark.integration


def run_demo(**env: str) -> subprocess.CompletedProcess:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")
    }
    environment.update(DJANGO_SETTINGS_MODULE="project.settings", **env)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=environment, check=True
    )
    return subprocess.run(
        [sys.executable, "manage.py", "demo"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_demo_runs_embedded_on_sqlite_and_the_in_memory_transport(tmp_path):
    result = run_demo(DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "memory://" in result.stdout and "sqlite" in result.stdout
    assert "demo OK: every order shipped exactly once" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_the_demo_runs_unchanged_on_postgresql_and_rabbitmq(broker_url, names):
    result = run_demo(
        DATABASE_URL=test_database_url(),
        CELERY_BROKER_URL=broker_url,
        SERVICE_NAME=names.service,
        EVENTS_EXCHANGE=names.exchange,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "amqp://" in result.stdout and "postgresql" in result.stdout
    assert "demo OK: every order shipped exactly once" in result.stdout
