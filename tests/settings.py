"""Test settings: the example project against real PostgreSQL and RabbitMQ.

``DATABASE_URL`` and ``CELERY_BROKER_URL`` may point elsewhere; pytest-django
creates ``test_<name>`` from the database named here.

Behind a pooler in transaction mode (``bin/pgbouncer``; ``DATABASE_URL`` on port 6432, or
``DATABASE_DIRECT_URL`` set): the database gets Django's marker for such a pooler
(``DISABLE_SERVER_SIDE_CURSORS``, which also keeps ``publish()`` from preparing statements),
the test database is created and dropped on a direct connection, with ``FORCE`` (the pooler
keeps sessions on it), and the relay listens on ``DATABASE_DIRECT_URL``'s server
(``RELAY_LISTEN_DSN``), as a deployment would.
"""

import os
from urllib.parse import urlsplit

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/inbox_outbox")
os.environ.setdefault("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")

from project.settings import *  # noqa: F403
from project.settings import DATABASES, INBOX_OUTBOX, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]

# Django's Tasks framework through the outbox (inbox_outbox_tasks): django.tasks on Django 6,
# the django-tasks backport (the dev extra installs it) before.
import django  # noqa: E402

INSTALLED_APPS += (
    ["inbox_outbox_tasks"] if django.VERSION >= (6, 0) else ["django_tasks", "inbox_outbox_tasks"]
)
TASKS = {
    "default": {
        "BACKEND": "inbox_outbox_tasks.OutboxTaskBackend",
        "QUEUES": ["default", "reports"],
    }
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
INBOX_OUTBOX = {**INBOX_OUTBOX, "SERVICE": os.environ.get("SERVICE_NAME", "tests")}

#: The port bin/pgbouncer listens on.
PGBOUNCER_PORT = 6432
_url = urlsplit(os.environ["DATABASE_URL"])
if _url.port == PGBOUNCER_PORT:
    os.environ.setdefault(
        "DATABASE_DIRECT_URL",
        _url._replace(netloc=_url.netloc.rsplit(":", 1)[0] + ":5432").geturl(),
    )
if os.environ.get("DATABASE_DIRECT_URL"):
    _direct = urlsplit(os.environ["DATABASE_DIRECT_URL"])
    _server = {"host": _direct.hostname, "port": _direct.port or 5432}
    DATABASES["default"] |= {
        "ENGINE": "tests.pooled_postgresql",
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "TEST": {**DATABASES["default"].get("TEST", {}), "DIRECT": _server},
    }
    # Host and port only: the database name is the test database's, from DATABASES.
    INBOX_OUTBOX["RELAY_LISTEN_DSN"] = f"host={_server['host']} port={_server['port']}"

#: A second producing service's own database, for the fault suite's two-producer scenario
#: (tests/faults/test_two_producers.py). pytest-django creates a test database only for the
#: aliases some collected test asks for, so the rest of the suite never pays for it.
OTHER_SERVICE = "other_service"
DATABASES[OTHER_SERVICE] = {
    **DATABASES["default"],
    "NAME": f"{DATABASES['default']['NAME']}_{OTHER_SERVICE}",
}

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

# A subprocess under test records its spans with OpenTelemetry's SDK into a file the test reads.
if os.environ.get("TEST_SPANS_FILE"):
    from tests.spans import to_file

    to_file(os.environ["TEST_SPANS_FILE"])
