"""The telemetry endpoint of real relay and worker processes: Prometheus scraped while traffic
flows, and /live and /ready going unhealthy when a dependency is cut, and healthy again."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
from django.db import connection, transaction
from prometheus_client.parser import text_string_to_metric_families

from outbox import publish
from tests.conftest import test_database_url, wait_until
from tests.integration.test_workers import start_workers
from tests.tcp_proxy import TcpProxy
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None, ""


def samples(text):
    """{(sample name, frozenset of labels): value} of a Prometheus text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(found, name, **labels):
    want = set(labels.items())
    return sum(v for (n, lab), v in found.items() if n == name and want <= lab)


def test_a_scrape_while_traffic_flows_shows_what_was_published_sent_consumed_and_pending(
    processes, broker_url, names
):
    relay_port, worker_port = free_port(), free_port()
    start_workers(processes, broker_url, names, INBOX_OUTBOX_TELEMETRY_PORT=str(worker_port))
    processes.relay(INBOX_OUTBOX_TELEMETRY_PORT=str(relay_port))
    wait_until(lambda: get(relay_port, "/metrics")[0] == 200, timeout=30, message="relay up")

    stop = threading.Event()

    def traffic():
        n = 0
        try:
            while not stop.is_set() and n < 400:
                with transaction.atomic():
                    for _ in range(5):
                        publish("test.effect", {"n": n})
                        n += 1
                time.sleep(0.02)
        finally:
            connection.close()  # this thread's own connection

    publisher = threading.Thread(target=traffic)
    publisher.start()
    try:
        time.sleep(1.0)
        status, relay_text = get(relay_port, "/metrics")  # while messages flow
        assert status == 200
        relay = samples(relay_text)
        worker = samples(get(worker_port, "/metrics")[1])
    finally:
        stop.set()
        publisher.join()
    assert total(relay, "inbox_outbox_relay_messages_total", outcome="confirmed") > 0
    assert total(relay, "inbox_outbox_relay_batch_duration_seconds_count") > 0
    for gauge in ("outbox_unsent_messages", "outbox_oldest_unsent_age_seconds"):
        assert (f"inbox_outbox_{gauge}", frozenset()) in relay, gauge
    assert total(worker, "inbox_outbox_consumed_messages_total", outcome="done") > 0
    assert total(worker, "inbox_outbox_handler_duration_seconds_count") > 0
    for gauge in ("inbox_waiting_keys", "inbox_failed_due_messages"):
        assert (f"inbox_outbox_{gauge}", frozenset()) in worker, gauge

    # Afterwards the numbers agree with the rows: everything published got consumed.
    published = Effect.objects.filter(consumer="effect")
    wait_until(lambda: published.count() >= 5, timeout=30, message="effects")
    wait_until(
        lambda: (
            total(samples(get(relay_port, "/metrics")[1]), "inbox_outbox_outbox_unsent_messages")
            == 0
        ),
        timeout=30,
        message="the backlog gauge back to 0",
    )


def test_the_relays_readiness_follows_its_broker_and_its_liveness_stays(
    processes, broker_url, names
):
    port = free_port()
    host = urlsplit(broker_url)
    with TcpProxy((host.hostname or "127.0.0.1", host.port or 5672)) as proxy:
        processes.relay(
            CELERY_BROKER_URL=proxy.via(broker_url),
            INBOX_OUTBOX_TELEMETRY_PORT=str(port),
            INBOX_OUTBOX_RELAY_POLL_INTERVAL="0.2",
        )
        wait_until(lambda: get(port, "/ready")[0] == 200, timeout=30, message="ready")
        proxy.cut()
        with transaction.atomic():
            publish("test.effect", {"n": 1})  # the relay must talk to the broker to fail
        wait_until(lambda: get(port, "/ready")[0] == 503, timeout=30, message="not ready")
        assert "broker" in get(port, "/ready")[1]
        assert get(port, "/live")[0] == 200  # the loop still turns: not a restart case
        proxy.restore()
        wait_until(lambda: get(port, "/ready")[0] == 200, timeout=60, message="ready again")


def test_the_workers_readiness_follows_its_database(processes, broker_url, names):
    port = free_port()
    database = test_database_url()
    with TcpProxy(("127.0.0.1", urlsplit(database).port or 5432)) as proxy:
        start_workers(
            processes,
            broker_url,
            names,
            DATABASE_URL=proxy.via(database),
            INBOX_OUTBOX_TELEMETRY_PORT=str(port),
            INBOX_OUTBOX_INBOX_SWEEP_INTERVAL="0.3",
        )
        wait_until(lambda: get(port, "/ready")[0] == 200, timeout=30, message="ready")
        proxy.cut()
        wait_until(lambda: get(port, "/ready")[0] == 503, timeout=30, message="not ready")
        assert "database" in get(port, "/ready")[1]
        proxy.restore()
        wait_until(lambda: get(port, "/ready")[0] == 200, timeout=60, message="ready again")


def test_the_workers_readiness_and_health_file_follow_its_broker_connection(
    processes, broker_url, names, tmp_path
):
    port = free_port()
    health_file = tmp_path / "worker.health"
    host = urlsplit(broker_url)
    with TcpProxy((host.hostname or "127.0.0.1", host.port or 5672)) as proxy:
        start_workers(
            processes,
            broker_url,
            names,
            CELERY_BROKER_URL=proxy.via(broker_url),
            INBOX_OUTBOX_TELEMETRY_PORT=str(port),
            INBOX_OUTBOX_INBOX_SWEEP_INTERVAL="0.3",
            INBOX_OUTBOX_HEALTH_FILE=json.dumps(str(health_file)),
        )
        wait_until(lambda: get(port, "/ready")[0] == 200, timeout=30, message="ready")
        wait_until(health_file.exists, timeout=10, message="the health file")
        proxy.cut()
        wait_until(lambda: get(port, "/ready")[0] == 503, timeout=30, message="not ready")
        assert "broker" in get(port, "/ready")[1]
        assert get(port, "/live")[0] == 200  # the sweep still turns: not a restart case
        # Not touched while not ready, though the sweep keeps beating healthily.
        touched = health_file.stat().st_mtime
        time.sleep(1.5)
        assert get(port, "/ready")[0] == 503
        assert health_file.stat().st_mtime == touched
        proxy.restore()
        wait_until(lambda: get(port, "/ready")[0] == 200, timeout=90, message="ready again")
        wait_until(
            lambda: health_file.stat().st_mtime > touched,
            timeout=10,
            message="the health file touched again",
        )


def test_the_web_process_view_serves_its_publish_counts_and_the_gauges(client, names):
    with transaction.atomic():
        publish("test.effect", {"n": 1})
    response = client.get("/metrics")
    assert response.status_code == 200
    found = samples(response.content.decode())
    assert total(found, "inbox_outbox_published_messages_total", topic="test.effect") >= 1
    assert total(found, "inbox_outbox_outbox_unsent_messages") >= 1
