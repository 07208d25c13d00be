"""Property: a batch's one insert stores every row exactly as the one-row insert does, whatever
text, JSON, numbers and bytes the row holds (issue 17: the rows travel as one JSON parameter)."""

import json

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbox.models import InboxMessage
from inbox.processing import NewRow, _insert, _insert_all
from inbox_outbox.limits import json_text

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

#: Text PostgreSQL stores: any code point but NUL and lone surrogates (the envelope refuses
#: those), quotes, backslashes, percent signs and control characters included.
text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
    | st.sampled_from(['"', "\\", "%", "'", "\n", "\u2028", "\x01"]),
    max_size=20,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
bigint = st.integers(-(2**63), 2**63 - 1)


@st.composite
def new_rows(draw):
    count = draw(st.integers(1, 6))
    return [
        NewRow(
            consumer="",  # set per insert path
            message_id=f"m{n}-{draw(text)}",
            status=draw(st.sampled_from(["done", "waiting", "stale", "void", "failed"])),
            topic=draw(text),
            source=draw(text),
            key=draw(st.none() | text),
            epoch=draw(st.none() | bigint),
            sequence=draw(st.none() | bigint),
            voids=draw(st.none() | text),
            payload_json=json_text(draw(json_values)),
            headers_json=json_text(draw(st.dictionaries(text, json_values, max_size=3))),
            raw=draw(st.none() | st.binary(max_size=40)),
            attempts=draw(st.integers(0, 2**31 - 1)),
            delivery_count=draw(st.none() | st.integers(0, 2**31 - 1)),
            error=draw(text),
            trace=draw(text),
            retry_in=draw(st.none() | st.floats(0, 10**6)),
        )
        for n in range(count)
    ]


COMPARED = [
    "message_id", "topic", "source", "key", "epoch", "sequence", "voids", "payload", "headers",
    "raw_body", "status", "attempts", "delivery_count", "last_error", "traceback",
]  # fmt: skip


def stored(consumer):
    rows = InboxMessage.objects.filter(consumer=consumer).order_by("message_id")
    return [
        {
            **{f: getattr(row, f) for f in COMPARED},
            "raw_body": bytes(row.raw_body) if row.raw_body is not None else None,
            "payload": json.dumps(row.payload, sort_keys=True),
            "headers": json.dumps(row.headers, sort_keys=True),
            "processed": row.processed_at is not None,
            "due": row.next_attempt_at is not None,
        }
        for row in rows
    ]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=new_rows())
def test_the_batch_insert_stores_each_row_as_the_one_row_insert_does(rows):
    InboxMessage.objects.all().delete()
    alias = connection.alias
    with transaction.atomic():
        inserted = _insert_all(alias, [_with(row, consumer="bulk") for row in rows])
        for row in rows:
            _insert(alias, _with(row, consumer="one"))
    assert inserted == {("bulk", row.message_id) for row in rows}
    assert stored("bulk") == stored("one")


def _with(row, *, consumer):
    from dataclasses import replace

    return replace(row, consumer=consumer)


def test_a_row_given_twice_to_the_batch_insert_is_inserted_once_as_first_given():
    alias = connection.alias
    first = NewRow(consumer="c", message_id="twice", status="done")
    second = NewRow(consumer="c", message_id="twice", status="stale", error="second")
    with transaction.atomic():
        assert _insert_all(alias, [first, second]) == {("c", "twice")}
    assert list(InboxMessage.objects.values_list("status", "last_error")) == [("done", "")]
