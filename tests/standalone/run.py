"""Steps the install tests run in a fresh interpreter: ``python -m tests.standalone.run STEP``.

``DJANGO_SETTINGS_MODULE`` names the standalone project. Each step prints one JSON line.
"""

import json
import sys

import django


def declare() -> dict:
    """Declare the service queue the inbox consumes (bound to its handlers' topics)."""
    from inbox.consumer import QueueConsumer

    consumer = QueueConsumer()
    try:
        consumer.declare()
        return {
            "queue": consumer.queue.name,
            "topics": sorted(b.routing_key for b in consumer.queue.bindings),
        }
    finally:
        consumer.close()


def drain() -> dict:
    """Consume the service queue until it is idle for two seconds."""
    from inbox.consumer import QueueConsumer

    consumer = QueueConsumer()
    try:
        return {"handled": consumer.drain(idle_timeout=2.0)}
    finally:
        consumer.close()


def publish() -> dict:
    """``publish()`` one message in a transaction (topic and payload from argv)."""
    from django.db import transaction

    from outbox import publish

    topic, payload = sys.argv[2], json.loads(sys.argv[3])
    with transaction.atomic():
        message = publish(topic, payload, key="standalone-key")
    return {"id": str(message.id)}


def broker() -> dict:
    """Which broker URL the library would use, and where it found it."""
    from inbox_outbox.conf import broker_url, broker_url_source

    urls, where = broker_url_source()
    return {"url": ";".join(urls), "where": where, "broker_url": broker_url() if urls else None}


if __name__ == "__main__":
    django.setup()
    step = {"declare": declare, "drain": drain, "publish": publish, "broker": broker}[sys.argv[1]]
    print(json.dumps(step()))
