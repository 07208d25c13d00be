"""Run ``manage.py outbox_relay --once``, dying (SIGKILL-like ``os._exit``) right after the
broker confirmed the first batch and before the relay marks it sent."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402

from outbox.relay import Relay  # noqa: E402


def _die_before_recording(self, batch, result):  # type: ignore[no-untyped-def]
    assert result.sent, "the broker confirmed nothing; the crash would prove nothing"
    print(f"confirmed {len(result.sent)}, dying before marking sent", flush=True)
    os._exit(9)


Relay._record = _die_before_recording  # type: ignore[method-assign]
call_command("outbox_relay", "--once")
