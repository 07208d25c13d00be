"""Without opentelemetry installed, nothing imports it and both apps publish, relay and consume."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys

    class NoOpenTelemetry:
        '''Stands for an environment without the extra: every import of it fails, counted.'''
        attempts = []

        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                self.attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    blocker = NoOpenTelemetry()
    sys.meta_path.insert(0, blocker)

    import django
    django.setup()
    from django.core.management import call_command
    call_command("migrate", verbosity=0)

    from django.db import transaction
    from inbox.processing import process_batch
    from inbox.testing import deliver, deliver_outbox
    from inbox_outbox import tracing
    from outbox import publish
    from outbox.models import OutboxMessage

    assert not tracing.ENABLED
    with transaction.atomic():
        publish("test.effect", {"n": 1})
        publish("test.effect", {"n": 2}, key="k")
    outcomes = deliver_outbox()
    assert [sorted(o.values(), key=str) for o in outcomes], outcomes
    assert OutboxMessage.objects.filter(status="sent").count() == 2
    assert OutboxMessage.objects.filter(headers__has_key="traceparent").count() == 0
    deliver("test.effect", {"poison": True})  # a failure path
    process_batch([(b"not json", {"message_id": "x", "type": "test.effect"}, {})])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    print("loaded:", loaded, "attempts:", len(blocker.attempts))
    assert not loaded, loaded
    # One probe each in inbox_outbox.tracing and inbox_outbox.metrics, both refused.
    assert len(blocker.attempts) <= 2, blocker.attempts
    print("ok")
    """
)


def test_without_opentelemetry_nothing_imports_it_and_publish_relay_and_consume_work(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_URL": "memory://",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("TEST_SPANS_FILE", None)
    # SQLite here: not the PostgreSQL server behind a pooler that CI's PgBouncer stage names.
    env.pop("DATABASE_DIRECT_URL", None)
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("ok"), run.stdout
