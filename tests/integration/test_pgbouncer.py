"""publish() behind a real PgBouncer in transaction mode (bin/pgbouncer, 127.0.0.1:6432).

Each transaction may run on another server session, one that another client's statements
were prepared on. Two publishing processes with different statement histories must each
store exactly the columns they passed, and a statement missing from the session must fail
with an error that says what to set, never run someone else's statement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from outbox.models import OutboxMessage
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PGBOUNCER = "host=127.0.0.1 port=6432 user=postgres dbname=pgbouncer"


@pytest.fixture(scope="module")
def pgbouncer() -> None:
    """PgBouncer up, started by the test tooling like the other services."""
    subprocess.run([str(ROOT / "bin" / "pgbouncer")], check=True, timeout=300)


class Publisher:
    """A publishing process of its own, connected through PgBouncer, driven line by line."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        s = connection.settings_dict
        env = {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:6432/{s['NAME']}",
            "INBOX_OUTBOX_PREPARE_STATEMENTS": "true",  # forced on: what the test is about
            "INBOX_OUTBOX_NUDGE": "false",
        }
        self.log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "tests/pooled_publisher.py"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def publish(self, **kwargs: object) -> dict[str, str]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"topic": "t", "payload": {"n": 1}, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"publisher died; see {self.log.name}"
        return json.loads(line)

    def close(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=30)  # closes its pipes
        self.log.close()


@pytest.fixture
def publishers(pgbouncer, tmp_path):
    made: list[Publisher] = []

    def make(name: str) -> Publisher:
        made.append(Publisher(tmp_path, name))
        return made[-1]

    yield make
    for publisher in made:
        publisher.close()
    # PgBouncer keeps its server sessions on the test database, which would keep it from
    # being dropped at the end of the run.
    _end_server_sessions()


def _pooled_servers() -> set[int]:
    """Backend pids of the server sessions PgBouncer holds on the test database."""
    with psycopg.connect(PGBOUNCER, autocommit=True, connect_timeout=10) as admin:
        result = admin.pgconn.exec_(b"SHOW SERVERS")  # the admin console speaks simple query only
        columns = [result.fname(i).decode() for i in range(result.nfields)]
        rows = [
            {c: (result.get_value(r, i) or b"").decode() for i, c in enumerate(columns)}
            for r in range(result.ntuples)
        ]
    name = connection.settings_dict["NAME"]
    return {int(row["remote_pid"]) for row in rows if row["database"] == name}


def _end_server_sessions() -> None:
    """End every server session PgBouncer holds on the test database, as its
    server_lifetime, a failover or a restart does; the pooler opens new ones when asked."""
    s = connection.settings_dict
    direct = {"host": "127.0.0.1", "port": 5432, **s.get("TEST", {}).get("DIRECT", {})}
    # On a connection of our own, not through the pooler: there the statement could run on
    # the very server session it is meant to end, and spare it.
    with psycopg.connect(dbname=s["NAME"], user="postgres", autocommit=True, **direct) as own:
        pids = list(_pooled_servers())
        own.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", [pids])
    wait_until(
        lambda: not (_pooled_servers() & set(pids)),
        timeout=10,
        message="PgBouncer to drop the ended server sessions",
    )


def _stored(answer: dict[str, str]) -> dict[str, object]:
    assert "id" in answer, answer
    row = OutboxMessage.objects.filter(id=uuid.UUID(answer["id"]))
    return row.values("headers", "dedup_key", "payload").get()


def test_a_statement_another_process_prepared_never_runs_with_our_parameters(publishers):
    a, b = publishers("a"), publishers("b")
    first = a.publish(headers={"h": "1"})  # a: insert with headers, prepared on server S1
    _end_server_sessions()  # S1 is gone; b gets a fresh server S2
    theirs = b.publish(dedup_key="d1")  # b: insert with a dedup key, same parameter count, on S2
    # a's next transaction runs on S2 (the only server left), where a's statement was
    # never prepared but b's is. With per-process names (a's and b's first statement were
    # both "inbox_outbox_0"), a's headers were stored as b's dedup key; named for their text,
    # a's statement is missing there, and the error says what to set.
    answer = a.publish(headers={"h": "2"})
    assert answer.get("error") == "StatementLost", answer
    assert "does not exist" in answer["message"], answer
    assert '"DISABLE_SERVER_SIDE_CURSORS": True' in answer["message"], answer
    assert 'INBOX_OUTBOX["PREPARE_STATEMENTS"] = False' in answer["message"], answer
    answer = a.publish(headers={"h": "2"})  # the next transaction prepares it again
    assert _stored(first) == {"headers": {"h": "1"}, "dedup_key": None, "payload": {"n": 1}}
    assert _stored(theirs) == {"headers": {}, "dedup_key": "d1", "payload": {"n": 1}}
    assert _stored(answer) == {"headers": {"h": "2"}, "dedup_key": None, "payload": {"n": 1}}
    assert OutboxMessage.objects.count() == 3


def test_processes_sharing_a_server_session_prepare_without_already_exists(publishers):
    a, b = publishers("a"), publishers("b")
    answers = [
        a.publish(headers={"h": "a"}),  # a prepares its statement on the server
        b.publish(dedup_key="b"),  # b's first statement on the same server: same old name
        b.publish(headers={"h": "b"}),  # b prepares a's statement, already on the server
        a.publish(dedup_key="a"),
    ]
    assert [a.get("error") for a in answers] == [None] * 4, answers
    assert [_stored(answer) for answer in answers] == [
        {"headers": {"h": "a"}, "dedup_key": None, "payload": {"n": 1}},
        {"headers": {}, "dedup_key": "b", "payload": {"n": 1}},
        {"headers": {"h": "b"}, "dedup_key": None, "payload": {"n": 1}},
        {"headers": {}, "dedup_key": "a", "payload": {"n": 1}},
    ]
