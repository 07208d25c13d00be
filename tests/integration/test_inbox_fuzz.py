"""Property: whatever arrives on the service queue, a real Celery worker acknowledges it,
stores it exactly once (handled, or ``rejected`` with its reason and raw body) and keeps
running. Thousands of generated deliveries, NUL-capable strings included (issue 13)."""

import itertools
import json
import subprocess
import time

import kombu
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from inbox.models import InboxMessage
from inbox_outbox.cloudevents import CONTENT_TYPE
from tests.conftest import Sender, wait_until
from tests.integration.test_workers import start_workers

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TOPIC = "test.fuzz"
EXAMPLES = 110
PER_EXAMPLE = (18, 24)  # deliveries per example: at least 110 * 18 = 1,980 ...
MINIMUM = 2_000  # ... and the test checks that at least this many went out

# -- values ----------------------------------------------------------------------------
#: Any text, NUL and every other code point included (lone surrogates only where JSON
#: escapes can carry them, see HOSTILE_DATA).
anything = st.text(max_size=30)
#: Text a well-behaved producer sends: no control characters, no surrogates.
clean = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=30)

clean_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(clean, inner, max_size=4),
    max_leaves=12,
)
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | anything,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(anything, inner, max_size=4),
    max_leaves=12,
)
#: What an AMQP field table can carry to a consumer: NUL, surrogates and bytes that are not
#: UTF-8 included. (Not NaN or infinities: RabbitMQ closes the publisher's connection with
#: INTERNAL_ERROR on such a double, so they never reach a queue.)
amqp_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None), max_size=20)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(anything, inner, max_size=3),
    max_leaves=8,
)
amqp_headers = st.dictionaries(st.text(max_size=20), amqp_value, max_size=4)
clean_headers = st.dictionaries(clean, clean_json, max_size=3)

#: JSON literals for ``data`` that no strict reader takes.
HOSTILE_DATA = st.one_of(
    st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", '"\\ud800"', '["\\udfff x"]']
    ),
    st.integers(4_301, 6_000).map(lambda digits: "7" * digits),
    st.integers(101, 100_000).map(lambda depth: "[" * depth + "]" * depth),
    anything.map(lambda s: json.dumps({"s": s + "\x00"})),
)


# -- deliveries ---------------------------------------------------------------------------
#: Each delivery is a template; ``n`` (unique per delivery) is filled in when it is sent.
#: ``expect`` is "done", "rejected" or "either" (the property is then only "stored once").


@st.composite
def valid(draw):
    event = {
        "specversion": "1.0",
        "id": "fz-{n}-" + draw(clean),
        "source": draw(st.sampled_from(["fuzzer", "other-service", ""])),
        "type": TOPIC,
        "datacontenttype": "application/json",
        "data": draw(clean_json),
    }
    if draw(st.booleans()):
        event["partitionkey"], event["sequence"] = "key-{n}", "1"
    return {"kind": "event", "event": event, "headers": draw(clean_headers), "expect": "done"}


#: One change that makes a valid delivery bad, and what it replaces.
MUTATIONS = {
    "data": HOSTILE_DATA,
    "id": st.one_of(
        anything.map(lambda s: "fz-{n}-" + s + "\x00"),
        st.integers(200, 400).map(lambda size: "fz-{n}-" + "i" * size),
        st.sampled_from(["\n", "\t", "\x1f", "\x7f"]).map(lambda c: "fz-{n}-" + c),
        st.sampled_from([None, 5, [], {}]),
    ),
    "partitionkey": st.one_of(
        anything.map(lambda s: s + "\x00"), st.just("k" * 256), st.sampled_from([[], {}, 1.5])
    ),
    "sequence": st.sampled_from(
        [str(2**63), str(-(2**63) - 1), "1e999", "abc", "1.5", " 1", "", "٣", True, 1.0, []]
    ),
    "source": st.one_of(st.just("s" * 256), anything.map(lambda s: s + "\x00"), st.just(7)),
    "type": st.sampled_from([None, "", 5, "t" * 256, "nul\x00"]),
    "specversion": st.sampled_from(["0.3", "2.0", 1, None]),
    "voids": st.one_of(anything.map(lambda s: s + "\x00"), st.just(3)),
}


@st.composite
def hostile(draw):
    base = draw(valid())
    event = dict(base["event"])
    field = draw(st.sampled_from([*sorted(MUTATIONS), "header"]))
    headers = base["headers"]
    if field == "header":
        headers = {
            **headers,
            "bad": draw(
                st.sampled_from(["nul\x00", b"\xff\xfe", "\udc80", [b"\x80"], {"x": "\x00"}])
            ),
        }
    elif field == "data":
        event["data"] = draw(HOSTILE_DATA)  # a literal, spliced in as text when sent
        return {
            "kind": "event",
            "event": event,
            "raw_data": True,
            "headers": headers,
            "expect": "rejected",
        }
    else:
        if field == "voids":
            event.pop("partitionkey", None)
            event.pop("sequence", None)
        event[field] = draw(MUTATIONS[field])
        if field == "sequence" and "partitionkey" not in event:
            event["partitionkey"] = "key-{n}"
    return {"kind": "event", "event": event, "headers": headers, "expect": "rejected"}


@st.composite
def arbitrary(draw):
    """A CloudEvent of arbitrary attribute values: either outcome, stored once."""
    event = {"specversion": "1.0", "id": "fz-{n}-" + draw(anything), "type": TOPIC}
    for name in ("source", "partitionkey", "sequence", "sequenceepoch", "time", "data"):
        if draw(st.booleans()):
            event[name] = draw(any_json)
    return {"kind": "event", "event": event, "headers": draw(amqp_headers), "expect": "either"}


@st.composite
def plain(draw):
    """Plain JSON whose AMQP properties carry id and topic, for a service not built on us."""
    return {
        "kind": "plain",
        "body": {"n": "{n}", "value": draw(any_json)},
        "message_id": "fz-{n}-" + draw(anything),
        "headers": draw(amqp_headers),
        "expect": "either",
    }


@st.composite
def garbage(draw):
    return {"kind": "bytes", "body": draw(st.binary(max_size=60)), "expect": "rejected"}


delivery = st.one_of(valid(), hostile(), hostile(), arbitrary(), plain(), garbage())


def fill(value, n):
    if isinstance(value, str):
        return value.replace("{n}", str(n))
    if isinstance(value, dict):
        return {k: fill(v, n) for k, v in value.items()}
    return value


def build(template, n):
    """The delivery as sent: (body, properties, headers, id it may be stored under)."""
    headers = template.get("headers") or {}
    if template["kind"] == "bytes":
        return b"%d:" % n + template["body"], {}, headers, None
    if template["kind"] == "plain":
        message_id = fill(template["message_id"], n)
        body = json.dumps(fill(template["body"], n)).encode()
        return body, {"message_id": message_id, "type": TOPIC}, headers, message_id
    # Every body unique (an extension attribute the inbox ignores): two deliveries of one
    # body and no usable id are one message to the inbox, and the oracle could not tell.
    event = {**fill(template["event"], n), "fuzzcount": n}
    if template.get("raw_data"):
        literal, event["data"] = event["data"], "@@DATA@@"
        body = json.dumps(event).replace('"@@DATA@@"', literal).encode()
    else:
        body = json.dumps(event).encode()  # ensure_ascii: NUL and surrogates travel escaped
    props = {"content_type": CONTENT_TYPE}
    return body, props, headers, event.get("id") if isinstance(event.get("id"), str) else None


# -- the property ------------------------------------------------------------------------


def queue_counts(broker_url, queue):
    """(ready, unacknowledged, consumers) of ``queue``, from the broker itself."""
    vhost = kombu.Connection(broker_url).virtual_host or "/"
    listing = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "list_queues",
            "-p",
            vhost,
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for line in listing.splitlines():
        fields = line.split("\t")
        if fields[0] == queue:
            return tuple(int(f) for f in fields[1:])
    raise AssertionError(f"queue {queue} not found in {listing!r}")


def test_thousands_of_generated_deliveries_are_all_acked_each_stored_once_and_the_worker_lives(
    processes, broker_url, names
):
    [worker] = start_workers(processes, broker_url, names)
    sender = Sender(names)
    numbers = itertools.count(1)
    consumer = f"{names.service}:fuzz"
    seen = {"sent": 0, "rows": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # No shrinking: each step costs a round trip through the worker, and a failure's
        # message already names the delivery.
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(delivery, min_size=PER_EXAMPLE[0], max_size=PER_EXAMPLE[1]))
    def deliveries_are_stored_once(templates):
        last = InboxMessage.objects.order_by("-id").values_list("id", flat=True).first() or 0
        sent = []
        for template in templates:
            n = next(numbers)
            body, props, headers, message_id = build(template, n)
            sender.raw(body, to_queue=True, application_headers=headers, **props)
            sent.append((template, body, props, headers, message_id))
        seen["sent"] += len(sent)
        new_rows = InboxMessage.objects.filter(id__gt=last)
        deadline = time.monotonic() + 30
        while new_rows.count() < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # a second row for any of them would show now
        rows = list(
            new_rows.order_by("id").values(
                "consumer", "message_id", "status", "raw_body", "last_error"
            )
        )
        seen["rows"] += len(rows)
        by_body = {bytes(r["raw_body"]): r for r in rows if r["status"] == "rejected"}
        by_id = {r["message_id"]: r for r in rows if r["consumer"] == consumer}
        lost = []
        for template, body, props, headers, message_id in sent:
            row = by_body.pop(body, None) or by_id.pop(message_id, None)
            if row is None:
                lost.append((template["expect"], body[:400], props, headers))
                continue
            expect = template["expect"]
            if expect == "done":
                assert row["status"] == "done", (body[:400], headers, row["last_error"])
            elif expect == "rejected":
                assert row["status"] == "rejected" and row["last_error"], (body[:400], row)
        assert not lost, f"not stored (worker alive: {worker.poll() is None}): {lost}"
        assert not by_body and not by_id, f"rows matching no delivery: {by_body} {by_id}"
        assert len(rows) == len(sent), "one row per delivery, no more"
        assert worker.poll() is None, "the worker died"

    try:
        deliveries_are_stored_once()
    finally:
        sender.close()
    assert seen["sent"] >= MINIMUM, seen
    wait_until(
        lambda: queue_counts(broker_url, names.queue)[:2] == (0, 0),
        timeout=30,
        message=lambda: f"every delivery acked: {queue_counts(broker_url, names.queue)}",
    )
    assert queue_counts(broker_url, names.queue)[2] == 1, "the worker is still consuming"
    assert worker.poll() is None
    log = worker.log_path.read_text()
    assert "Exception in thread" not in log and "Traceback" not in log, log[-3000:]
    print(f"\n{seen['sent']} generated deliveries, {seen['rows']} rows, all acked")
