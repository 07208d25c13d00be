"""Test settings: the example project against real PostgreSQL and RabbitMQ.

``DATABASE_URL`` and ``CELERY_BROKER_URL`` may point elsewhere; pytest-django
creates ``test_<name>`` from the database named here.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/inbox_outbox")
os.environ.setdefault("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")

from project.settings import *  # noqa: F403
from project.settings import INBOX_OUTBOX, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
INBOX_OUTBOX = {**INBOX_OUTBOX, "SERVICE": os.environ.get("SERVICE_NAME", "tests")}

# Subprocesses started by the tests take overrides as INBOX_OUTBOX_<KEY>=<JSON value>.
import json  # noqa: E402

for _name, _value in os.environ.items():
    if _name.startswith("INBOX_OUTBOX_"):
        INBOX_OUTBOX[_name.removeprefix("INBOX_OUTBOX_")] = json.loads(_value)

# A process under test may run with its application clock skewed: CLOCK_SKEW_SECONDS shifts
# django.utils.timezone.now, which the library would use if it compared times on the
# application's clock (it must not: the database's clock decides).
if os.environ.get("CLOCK_SKEW_SECONDS"):
    import datetime as _dt

    from django.utils import timezone as _timezone

    _skew = _dt.timedelta(seconds=float(os.environ["CLOCK_SKEW_SECONDS"]))
    _real_now = _timezone.now
    _timezone.now = lambda: _real_now() + _skew
