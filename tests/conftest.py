"""Fixtures shared by the suite: isolated broker names, real subprocesses, broker access."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import amqp
import kombu
import pytest
from django.db import connections

from inbox_outbox.cloudevents import CONTENT_TYPE
from tests.cluster import NODES, Cluster, exclusive

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Names:
    """Broker names private to one test, so tests never see each other's messages."""

    service: str
    exchange: str

    @property
    def queue(self) -> str:
        return self.service


@pytest.fixture
def broker_url() -> str:
    return os.environ["CELERY_BROKER_URL"]


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """The three-node cluster of ``bin/rabbitmq-cluster``, started if it is down."""
    found = Cluster()
    found.start()
    return found


@pytest.fixture
def cluster_nodes(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster for a test that stops or kills nodes: held alone (tests/cluster.py's
    lock) and every node up again afterwards."""
    with exclusive():
        cluster.start()
        try:
            yield cluster
        finally:
            for node in NODES:
                if not cluster.serving(node):
                    with contextlib.suppress(RuntimeError):
                        cluster.ctl(node, "start_app")  # a node stopped with stop_app
            cluster.start()


@pytest.fixture
def names(settings, broker_url: str) -> Iterator[Names]:
    tag = f"t{uuid.uuid4().hex[:10]}"
    ns = Names(service=tag, exchange=f"{tag}.events")
    settings.INBOX_OUTBOX = {
        **settings.INBOX_OUTBOX,
        "SERVICE": ns.service,
        "EXCHANGE": ns.exchange,
    }
    yield ns
    with kombu.Connection(broker_url) as conn:
        dead = f"{ns.queue}.dead-letter"  # a quorum queue's dead-letter queue and exchange
        for kind, name in (
            ("queue", ns.queue),
            ("exchange", ns.exchange),
            ("queue", dead),
            ("exchange", dead),
            ("queue", f"celery-{ns.service}"),  # the workers' task queue (Processes.worker)
        ):
            with contextlib.suppress(*conn.channel_errors):
                getattr(conn.channel(), f"{kind}_delete")(name)


@pytest.fixture
def bind_queue(names: Names, broker_url: str) -> Callable[[str], kombu.Queue]:
    """Declares the test's queue bound to a routing key on the test's exchange."""

    def bind(routing_key: str) -> kombu.Queue:
        exchange = kombu.Exchange(names.exchange, "topic", durable=True)
        queue = kombu.Queue(names.queue, exchange=exchange, routing_key=routing_key, durable=True)
        with kombu.Connection(broker_url) as conn:
            queue(conn.default_channel).declare()
        return queue

    return bind


def cloudevent(
    topic: str,
    data: object,
    *,
    id: str | None = None,
    key: str | None = None,
    sequence: int | None = None,
) -> dict:
    """A CloudEvents body as another service would send it."""
    body = {
        "specversion": "1.0",
        "id": id or str(uuid.uuid4()),
        "source": "test",
        "type": topic,
        "datacontenttype": "application/json",
        "data": data,
    }
    if key is not None:
        body["partitionkey"], body["sequence"] = key, str(sequence)
    return body


def test_database_url(using: str = "default") -> str:
    """The URL of the test database behind alias ``using``, for subprocesses."""
    s = connections[using].settings_dict
    user = s.get("USER") or "postgres"
    auth = f"{user}:{s['PASSWORD']}" if s.get("PASSWORD") else user
    return f"postgres://{auth}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


test_database_url.__test__ = False  # type: ignore[attr-defined]


class Processes:
    """Starts real processes of the example project and kills whatever is left at teardown."""

    def __init__(self, names: Names | None, broker_url: str, tmp_path: Path) -> None:
        self.names = names
        self.broker_url = broker_url
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": test_database_url(),
            "CELERY_BROKER_URL": self.broker_url,
            "PYTHONUNBUFFERED": "1",
        }
        if self.names is not None:
            env["SERVICE_NAME"] = self.names.service
            env["EVENTS_EXCHANGE"] = self.names.exchange
        env.update(extra)
        return env

    def start(self, *args: str, name: str, **env: str) -> subprocess.Popen:
        with open(self.tmp_path / f"{name}.log", "ab") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=self.env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc.log_path = self.tmp_path / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def relay(self, name: str = "relay", *extra: str, **env: str) -> subprocess.Popen:
        return self.start("manage.py", "outbox_relay", *extra, name=name, **env)

    def worker(self, name: str = "worker", *extra: str, **env: str) -> subprocess.Popen:
        return self.start(
            "-m",
            "celery",
            "-A",
            "project",
            "worker",
            "--pool",
            "solo",
            "-n",
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
            "-Q",
            f"celery-{self.names.service if self.names else 'x'}",
            *extra,
            name=name,
            **env,
        )

    @staticmethod
    def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.fixture
def processes(names: Names, broker_url: str, tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(names, broker_url, tmp_path)
    yield procs
    procs.stop_all()


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    interval: float = 0.1,
    message: str = "condition",
) -> object:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout}s waiting for {message() if callable(message) else message}"
            )
        time.sleep(interval)


def read_queue(broker_url: str, queue: kombu.Queue, *, idle: float = 1.0) -> list[kombu.Message]:
    """Every message currently in ``queue`` (acknowledged), in delivery order."""
    got: list[kombu.Message] = []
    with (
        kombu.Connection(broker_url) as conn,
        kombu.Consumer(
            conn, queues=[queue], on_message=lambda m: (got.append(m), m.ack()), prefetch_count=500
        ),
    ):
        while True:
            try:
                conn.drain_events(timeout=idle)
            except TimeoutError:
                return got


class Sender:
    """Publishes raw AMQP messages to the test's exchange or straight to its queue."""

    def __init__(self, names):
        self.names = names
        url = kombu.Connection(os.environ["CELERY_BROKER_URL"])  # its vhost: the workers'
        self.conn = amqp.Connection(
            f"{url.hostname or '127.0.0.1'}:{url.port or 5672}",
            userid=url.userid or "guest",
            password=url.password or "guest",
            virtual_host=url.virtual_host or "/",
        )
        self.conn.connect()
        self.channel = self.conn.channel()

    def event(self, topic, data, *, id=None, key=None, sequence=None):
        body = cloudevent(topic, data, id=id, key=key, sequence=sequence)
        self.raw(
            json.dumps(body).encode(),
            content_type=CONTENT_TYPE,
            message_id=body["id"],
            type=topic,
            routing_key=topic,
        )
        return body["id"]

    def raw(self, body, *, routing_key=None, to_queue=False, **properties):
        exchange = "" if to_queue else self.names.exchange
        self.channel.basic_publish(
            amqp.Message(body, delivery_mode=2, **properties),
            exchange=exchange,
            routing_key=self.names.queue if to_queue else routing_key,
        )

    def close(self):
        self.conn.close()
