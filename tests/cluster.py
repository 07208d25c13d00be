"""The three-node RabbitMQ cluster of the cluster tests (``bin/rabbitmq-cluster``).

Nodes qc1..qc3 listen on 127.0.0.1:5701-5703 beside the default node on 5672, which other
tests use and which nothing here touches. Tests marked ``cluster`` ask for the session
fixture ``cluster`` (tests/conftest.py), which starts the nodes that are down and leaves them
running for the next run (``bin/rabbitmq-cluster stop`` stops them).

A test that stops or kills nodes holds :data:`LOCK` meanwhile, so two test runs on one
machine never break the cluster under each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import kombu

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bin" / "rabbitmq-cluster"
NODES = (1, 2, 3)
#: Taken by a test that stops, kills or cuts off nodes (see the module's docstring).
LOCK = Path("/tmp/inbox-outbox-cluster.lock")


def node_url(node: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:570{node}//"


def node_name(node: int) -> str:
    return f"qc{node}@localhost"


class Cluster:
    """Starts, stops, kills and asks the cluster's nodes."""

    def script(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"bin/rabbitmq-cluster {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
        return done.stdout

    def start(self, node: int | None = None) -> None:
        """Start every node that is down (or ``node`` alone) and wait until it serves."""
        self.script("start", *([str(node)] if node else []))

    def url(self, *order: int) -> str:
        """The nodes' URLs in failover order (kombu's form), by default qc1, qc2, qc3."""
        return ";".join(node_url(n) for n in order or NODES)

    def ctl(self, node: int, *args: str, timeout: float = 120) -> str:
        """``rabbitmqctl`` against ``node`` (Debian's wrapper runs it as the rabbitmq user,
        whose Erlang cookie the nodes share)."""
        done = subprocess.run(
            ["rabbitmqctl", "-q", "-n", node_name(node), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node_name(node)} {' '.join(args)}: {done.stderr}")
        return done.stdout

    def shutdown(self, node: int) -> None:
        """Stop ``node``'s RabbitMQ and its VM (``rabbitmqctl shutdown``) and wait until it no
        longer serves.

        RabbitMQ 3.10 sometimes answers ``Error trying to stop RabbitMQ:
        {badmatch,{error,enoent}}`` (exit code 1) and halts all the same; that counts as
        stopped once the node's port is closed and its VM gone, anything else is raised."""
        try:
            self.ctl(node, "shutdown")
        except RuntimeError:
            deadline = time.monotonic() + 30
            while self.serving(node) or self._vm_alive(node):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _vm_alive(self, node: int) -> bool:
        try:
            self.pid(node)
        except RuntimeError:  # bin/rabbitmq-cluster pid: not running
            return False
        return True

    def stop_app(self, node: int) -> None:
        """Stop RabbitMQ on ``node``, its VM left running (the node leaves the cluster's
        majority: a minority node cut off)."""
        self.ctl(node, "stop_app")

    def start_app(self, node: int) -> None:
        self.ctl(node, "start_app")
        self.ctl(node, "await_startup")

    def pid(self, node: int) -> int:
        return int(self.script("pid", str(node)).strip())

    def kill(self, node: int) -> None:
        """SIGKILL ``node``'s Erlang VM and wait until its port is closed."""
        os.kill(self.pid(node), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.serving(node):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node_name(node)} still serves after SIGKILL")
            time.sleep(0.2)

    def serving(self, node: int) -> bool:
        """Whether ``node`` accepts AMQP connections."""
        try:
            with kombu.Connection(node_url(node), connect_timeout=2) as conn:
                conn.connect()
        except OSError:
            return False
        except Exception:  # refused at the AMQP level (a node booting or stopping)
            return False
        return True

    def queue(self, name: str, *, node: int | None = None) -> dict[str, object]:
        """The queue's type, members and leader as a node that is up sees them."""
        for asked in [node] if node else NODES:
            with contextlib.suppress(RuntimeError):
                rows = self.ctl(
                    asked,
                    "list_queues",
                    "name",
                    "type",
                    "members",
                    "leader",
                    "messages",
                    "--formatter",
                    "json",
                )
                for row in json.loads(rows or "[]"):
                    if row["name"] == name:
                        return dict(row)
                return {}
        raise RuntimeError("no node of the cluster answers")

    def leader(self, name: str) -> int:
        """The node holding the quorum queue's leader."""
        leader = str(self.queue(name)["leader"])
        return next(n for n in NODES if leader == node_name(n))


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Hold :data:`LOCK`: no other test run stops or kills the cluster's nodes meanwhile."""
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
