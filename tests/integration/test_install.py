"""Each app installs and runs alone and with the other, as a new project would use it.

Every step runs in a fresh interpreter against a project that has nothing but the apps it
names (``tests/standalone/``): ``manage.py check``, ``makemigrations --check``, ``migrate``
into a PostgreSQL database made for the test, then the app's main path against the real
RabbitMQ. The same projects prove the configuration checks: a broker URL only in
``CELERY_BROKER_URL``, no broker at all, ``USE_TZ = False``, and MariaDB (refused).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import kombu
import psycopg
import pytest
from django.db import connection

from tests.conftest import ROOT, read_queue

pytestmark = pytest.mark.integration

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
PROJECTS = ("outbox_only", "inbox_only", "both")
#: What each project's own test environment must not leak into the standalone one.
_LEAKS = ("DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL", "DATABASE_URL", "SERVICE_NAME")


@dataclass
class Project:
    """One standalone project: its settings module, database and broker names."""

    settings: str
    databases: dict
    service: str
    exchange: str
    broker_url: str | None = BROKER_URL
    use_tz: bool = True
    extra: dict | None = None  # more INBOX_OUTBOX keys

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _LEAKS and not k.startswith(("INBOX_OUTBOX", "STANDALONE_"))
        }
        env.update(
            DJANGO_SETTINGS_MODULE=f"tests.standalone.{self.settings}",
            STANDALONE_DATABASES=json.dumps(self.databases),
            STANDALONE_SERVICE=self.service,
            STANDALONE_EXCHANGE=self.exchange,
            STANDALONE_USE_TZ="1" if self.use_tz else "0",
            PYTHONUNBUFFERED="1",
        )
        if self.broker_url:
            env["STANDALONE_BROKER_URL"] = self.broker_url
        if self.extra:
            env["STANDALONE_INBOX_OUTBOX"] = json.dumps(self.extra)
        return env

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if ok:
            assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def manage(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("manage.py", *args, ok=ok)

    def step(self, *args: str) -> dict:
        return json.loads(self.run("-m", "tests.standalone.run", *args).stdout.splitlines()[-1])


def _postgres(dbname: str) -> psycopg.Connection:
    s = connection.settings_dict
    return psycopg.connect(
        host=s.get("HOST") or "127.0.0.1",
        port=int(s.get("PORT") or 5432),
        user=s.get("USER") or "postgres",
        password=s.get("PASSWORD") or None,
        dbname=dbname,
        autocommit=True,
        connect_timeout=10,
    )


@pytest.fixture
def postgres_database() -> Iterator[dict]:
    """A fresh, empty PostgreSQL database, dropped afterwards; Django's DATABASES for it."""
    s = connection.settings_dict
    name = f"standalone_{uuid.uuid4().hex[:12]}"
    with _postgres("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": s.get("USER") or "postgres",
            "PASSWORD": s.get("PASSWORD") or "",
            "HOST": s.get("HOST") or "127.0.0.1",
            "PORT": str(s.get("PORT") or 5432),
        }
    }
    with _postgres("postgres") as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def broker_names() -> Iterator[tuple[str, str]]:
    """A service and exchange name private to the test; its queues are deleted afterwards."""
    tag = f"standalone-{uuid.uuid4().hex[:10]}"
    service, exchange = tag, f"{tag}.events"
    yield service, exchange
    with kombu.Connection(BROKER_URL, connect_timeout=10) as conn:
        for kind, name in (
            ("queue", service),
            ("queue", f"{service}.probe"),
            ("queue", f"celery-{service}"),  # the Celery worker's task queue
            ("exchange", f"celery-{service}"),
            ("exchange", exchange),
        ):
            with contextlib.suppress(*conn.channel_errors):
                getattr(conn.channel(), f"{kind}_delete")(name)


def _query(databases: dict, sql: str, *params: object) -> list[tuple]:
    with _postgres(databases["default"]["NAME"]) as conn:
        return conn.execute(sql, params).fetchall()


def _install(project: Project) -> None:
    """check, makemigrations --check, migrate: what a new user runs first."""
    check = project.manage("check", "--fail-level", "WARNING")
    assert "System check identified no issues" in check.stdout, check.stdout + check.stderr
    project.manage("makemigrations", "--check", "--dry-run")
    project.manage("migrate", "--no-input")


def _tables(databases: dict) -> set[str]:
    rows = _query(databases, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {name for (name,) in rows}


def _probe_queue(project: Project, topic: str) -> kombu.Queue:
    """A queue of the test's own, bound to ``topic`` on the project's exchange."""
    exchange = kombu.Exchange(project.exchange, "topic", durable=True)
    queue = kombu.Queue(f"{project.service}.probe", exchange=exchange, routing_key=topic)
    with kombu.Connection(BROKER_URL, connect_timeout=10) as conn:
        queue(conn.default_channel).declare()
    return queue


def _send_plain_json(project: Project, topic: str, message_id: str, body: dict) -> None:
    """What a service without this library sends: plain JSON, id and topic as AMQP properties."""
    with kombu.Connection(BROKER_URL, connect_timeout=10) as conn:
        producer = conn.Producer()
        producer.publish(
            json.dumps(body).encode(),
            exchange=kombu.Exchange(project.exchange, "topic", durable=True),
            routing_key=topic,
            content_type="application/json",
            content_encoding="utf-8",
            message_id=message_id,
            type=topic,
            delivery_mode=2,
            mandatory=True,
        )


def _relay_once(project: Project, expected: int) -> None:
    done = project.manage("outbox_relay", "--once")
    assert f"settled {expected} message(s)" in done.stdout, done.stdout + done.stderr


def test_the_outbox_alone_installs_publishes_and_relays_to_rabbitmq(
    postgres_database, broker_names
):
    project = Project("outbox_only", postgres_database, *broker_names)
    _install(project)
    tables = _tables(postgres_database)
    assert {"outbox_message", "outbox_sequence"} <= tables
    assert not {t for t in tables if t.startswith("inbox_")}

    probe = _probe_queue(project, "standalone.created")
    published = project.step("publish", "standalone.created", '{"order": 7}')
    _relay_once(project, 1)

    [message] = read_queue(BROKER_URL, probe)
    event = json.loads(message.body)
    assert message.content_type == "application/cloudevents+json"
    assert event["specversion"] == "1.0"
    assert event["id"] == published["id"] == message.properties["message_id"]
    assert (event["type"], event["source"], event["data"]) == (
        "standalone.created",
        project.service,
        {"order": 7},
    )
    assert (event["partitionkey"], event["sequence"]) == ("standalone-key", "1")
    assert _query(postgres_database, "SELECT status FROM outbox_message") == [("sent",)]


def test_the_inbox_alone_installs_and_handles_a_plain_json_delivery(
    postgres_database, broker_names
):
    project = Project("inbox_only", postgres_database, *broker_names)
    _install(project)
    tables = _tables(postgres_database)
    assert {"inbox_message", "inbox_key_progress", "standalone_greeting"} <= tables
    assert not {t for t in tables if t.startswith("outbox_")}

    declared = project.step("declare")
    assert declared == {"queue": project.service, "topics": ["standalone.greeted"]}
    _send_plain_json(project, "standalone.greeted", "plain-1", {"name": "Ada"})
    assert project.step("drain") == {"handled": 1}

    assert _query(postgres_database, "SELECT consumer, message_id, status FROM inbox_message") == [
        (f"{project.service}:greet", "plain-1", "done")
    ]
    assert _query(postgres_database, "SELECT message_id, name FROM standalone_greeting") == [
        ("plain-1", "Ada")
    ]
    # The broker's copy was acknowledged after the commit: nothing is left to redeliver.
    assert project.step("drain") == {"handled": 0}


def test_the_inbox_alone_is_consumed_by_a_real_celery_worker(postgres_database, broker_names):
    project = Project("inbox_only", postgres_database, *broker_names)
    project.manage("migrate", "--no-input")
    project.step("declare")
    _send_plain_json(project, "standalone.greeted", "plain-worker", {"name": "Lin"})
    worker = subprocess.Popen(
        [
            sys.executable,
            *("-m", "celery", "-A", "tests.standalone.celery_app", "worker", "--pool", "solo"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"),
            *("-n", f"{project.service}@%h", "-Q", f"celery-{project.service}"),
        ],
        cwd=ROOT,
        env=project.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None:
            if _query(postgres_database, "SELECT status FROM inbox_message") == [("done",)]:
                break
            time.sleep(0.2)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        output = worker.communicate(timeout=30)[0]
    assert _query(postgres_database, "SELECT message_id, name FROM standalone_greeting") == [
        ("plain-worker", "Lin")
    ], output
    assert _query(postgres_database, "SELECT status FROM inbox_message") == [("done",)]


def test_both_apps_install_and_a_published_message_reaches_the_handler(
    postgres_database, broker_names
):
    project = Project("both", postgres_database, *broker_names)
    _install(project)
    assert {"outbox_message", "inbox_message", "standalone_greeting"} <= _tables(postgres_database)

    project.step("declare")
    published = project.step("publish", "standalone.greeted", '{"name": "Grace"}')
    _relay_once(project, 1)
    assert project.step("drain") == {"handled": 1}

    assert _query(postgres_database, "SELECT status FROM outbox_message") == [("sent",)]
    assert _query(postgres_database, "SELECT consumer, message_id, status FROM inbox_message") == [
        (f"{project.service}:greet", published["id"], "done")
    ]
    assert _query(postgres_database, "SELECT message_id, name FROM standalone_greeting") == [
        (published["id"], "Grace")
    ]


_SQLITE = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}


@pytest.mark.parametrize("name", PROJECTS)
def test_a_celery_broker_url_setting_without_a_celery_app_is_the_broker_used(name):
    # Not the default localhost URL: the one the user wrote, found with no Celery app module.
    url = "amqp://billing:secret@rabbit.internal:5673/prod"
    project = Project(name, _SQLITE, "billing", "events", broker_url=url)
    assert project.step("broker") == {
        "url": url,
        "where": "settings.CELERY_BROKER_URL",
        "broker_url": url,
    }
    project.manage("check", "--fail-level", "WARNING")


@pytest.mark.parametrize("name", PROJECTS)
def test_no_broker_anywhere_fails_manage_py_check_with_e011(name):
    project = Project(name, _SQLITE, "billing", "events", broker_url=None)
    done = project.manage("check", ok=False)
    assert done.returncode != 0
    assert "inbox_outbox.E011" in done.stderr and "HINT: Set INBOX_OUTBOX" in done.stderr
    if name != "inbox_only":  # the relay refuses to start rather than guess a broker
        relay = project.manage("outbox_relay", "--once", ok=False)
        assert relay.returncode != 0 and "inbox_outbox.E011" in relay.stderr


@pytest.mark.parametrize("name", PROJECTS)
def test_use_tz_false_fails_manage_py_check_with_e013(name):
    project = Project(name, _SQLITE, "billing", "events", use_tz=False)
    done = project.manage("check", ok=False)
    assert done.returncode != 0
    assert "inbox_outbox.E013" in done.stderr and "USE_TZ = True" in done.stderr


def test_a_bad_setting_fails_manage_py_check_instead_of_crashing_it():
    project = Project(
        "both",
        _SQLITE,
        "billing",
        "events",
        extra={"RELAY_CONFIRM_TIMEOUT": "30", "RELAY_LEASE_SECONDS": None},
    )
    done = project.manage("check", ok=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("inbox_outbox.E008") == 2


@pytest.fixture
def mariadb_database() -> Iterator[dict]:
    """An empty MariaDB database (fails, never skips, when MariaDB is not reachable)."""
    import MySQLdb

    try:
        admin = MySQLdb.connect(connect_timeout=10, **MARIADB)
    except MySQLdb.OperationalError as exc:
        pytest.fail(
            f"MariaDB is not reachable on {MARIADB['host']}:{MARIADB['port']} ({exc}); "
            ".ci/run starts it, or start it with "
            "`start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`."
        )
    name = f"standalone_{uuid.uuid4().hex[:12]}"
    admin.cursor().execute(f"CREATE DATABASE `{name}`")
    try:
        yield {
            "default": {
                "ENGINE": "django.db.backends.mysql",
                "NAME": name,
                "USER": MARIADB["user"],
                "PASSWORD": MARIADB["password"],
                "HOST": MARIADB["host"],
                "PORT": str(MARIADB["port"]),
            }
        }
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def _mariadb_tables(name: str) -> list[str]:
    import MySQLdb

    conn = MySQLdb.connect(connect_timeout=10, **MARIADB)
    try:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [name]
        )
        return [row[0] for row in cursor.fetchall()]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("name", "apps"),
    [("outbox_only", ["outbox"]), ("inbox_only", ["inbox"]), ("both", ["outbox", "inbox"])],
)
def test_mariadb_is_refused_by_check_and_migrate_with_e010(mariadb_database, name, apps):
    project = Project(name, mariadb_database, "billing", "events")
    check = project.manage("check", ok=False)
    assert check.returncode != 0
    for app in apps:
        assert f"inbox_outbox.E010) The {app} app needs PostgreSQL" in check.stderr, check.stderr
    assert "is mysql" in check.stderr and "DATABASE_ROUTERS" in check.stderr

    migrate = project.manage("migrate", "--no-input", ok=False)
    assert migrate.returncode != 0 and "inbox_outbox.E010" in migrate.stderr
    assert _mariadb_tables(mariadb_database["default"]["NAME"]) == []
