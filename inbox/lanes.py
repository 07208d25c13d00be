"""Handler threads fed by the worker's consumer, so that no handler keeps the worker's broker
connection from heartbeating.

The Celery worker receives deliveries on its event loop, which also sends the AMQP
heartbeats. :class:`Lanes` hands each delivery to one of ``INBOX_CONCURRENCY`` handler
threads, each with its own database connection, and acknowledges on the event loop once the
thread reports the batch durable (a pipe wakes the loop: kombu channels belong to one thread).
A stream (source, topic and ordering key) stays on one lane while any of its deliveries is
unsettled, in arrival order, so a key is never handled on two threads at once; a stream with
nothing outstanding goes to the least loaded lane, so other keys flow past a slow handler.
``PREFETCH_COUNT`` bounds what all lanes hold together, and a lane takes at most its share of
it at once (``Settings.inbox_lane_batch``), so memory stays flat however long the backlog.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

import kombu

from inbox_outbox.conf import get_settings

from .consumer import Receiver, Settle

logger = logging.getLogger(__name__)

#: How long ``stop()`` waits for a lane's batch in progress before leaving it to the broker.
STOP_TIMEOUT = 30.0


def lane_key(message: kombu.Message) -> bytes:
    """What decides a delivery's lane: its stream if the body names a key, else its id."""
    try:
        event = json.loads(message.body or b"")
    except Exception:  # not JSON, too deep, too large a number: any lane; the inbox rejects it
        event = None
    if isinstance(event, dict) and event.get("partitionkey") is not None:
        return repr((event.get("source"), event.get("type"), event.get("partitionkey"))).encode()
    return repr(message.properties.get("message_id")).encode()


class _Lane:
    """One handler thread: it takes its stream's deliveries first, then any unclaimed one."""

    def __init__(self, lanes: Lanes, number: int) -> None:
        self.lanes = lanes
        self.number = number
        self.own: collections.deque[kombu.Message] = collections.deque()
        self.thread = threading.Thread(target=self._run, name=f"inbox-lane-{number}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        lanes = self.lanes
        receiver = lanes.receiver
        try:
            while True:
                batch = lanes.take(self, limit=lanes.batch_size, wait=None)
                if not batch:
                    return  # stopping
                if receiver.delay and len(batch) < lanes.batch_size:
                    batch += lanes.take(
                        self, limit=lanes.batch_size - len(batch), wait=receiver.delay
                    )
                if lanes.stopping:  # neither handled nor acked: the broker delivers them again
                    return
                lanes.done(batch, receiver.handle(batch))
        finally:
            from django.db import connections

            connections.close_all()  # this thread's own connections


class Lanes:
    """The consumer's ``on_message``: hands deliveries to lanes, settles on the event loop.

    Routing state is shared between the event loop (which routes and settles) and the lanes
    (which take work), under one condition variable; each step under it is O(batch).
    """

    def __init__(self, *, hub: Any, count: int, receiver: Receiver | None = None) -> None:
        self.hub = hub
        self.receiver = receiver or Receiver()
        #: A lane's batch: its share of the prefetch at most (``Settings.inbox_lane_batch``).
        self.batch_size = min(self.receiver.batch_size, get_settings().inbox_lane_batch)
        self.stopping = False
        self._cond = threading.Condition()
        self._unclaimed: collections.deque[tuple[bytes, kombu.Message]] = collections.deque()
        self._pins: dict[bytes, list[int]] = {}  # stream -> [lane number, unsettled]
        self._routed: dict[Any, bytes] = {}  # delivery tag -> stream
        self._finished: collections.deque[tuple[list[kombu.Message], list[Settle]]] = (
            collections.deque()
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        hub.add_reader(self._wake_r, self._on_wake)
        self.lanes = [_Lane(self, n) for n in range(max(1, count))]

    def __call__(self, message: kombu.Message) -> None:
        stream = lane_key(message)
        with self._cond:
            self._routed[message.delivery_tag] = stream
            pin = self._pins.get(stream)
            if pin is None:
                self._unclaimed.append((stream, message))
            else:
                pin[1] += 1
                self.lanes[pin[0]].own.append(message)
            self._cond.notify_all()

    def take(self, lane: _Lane, *, limit: int, wait: float | None) -> list[kombu.Message]:
        """Up to ``limit`` deliveries for ``lane``: its pinned streams' first, then unclaimed
        ones, pinning their streams to it. Blocks until there is one (``wait=None``) or for at
        most ``wait`` seconds; returns ``[]`` when stopping.

        An unclaimed delivery's stream is never pinned: pinning a stream moves all its
        unclaimed deliveries to the lane at once, in arrival order, under the same lock.
        """
        deadline = None if wait is None else time.monotonic() + wait
        taken: list[kombu.Message] = []
        with self._cond:
            while not self.stopping:
                while len(taken) < limit and (lane.own or self._unclaimed):
                    if lane.own:
                        taken.append(lane.own.popleft())
                        continue
                    stream, message = self._unclaimed.popleft()
                    self._pins[stream] = [lane.number, 1]
                    taken.append(message)
                    self._move_stream(stream, lane)
                if taken:
                    return taken
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return taken
                self._cond.wait(remaining)
        return []

    def _move_stream(self, stream: bytes, lane: _Lane) -> None:
        """Move ``stream``'s other unclaimed deliveries to ``lane`` (bounded by the prefetch)."""
        keep: collections.deque[tuple[bytes, kombu.Message]] = collections.deque()
        pin = self._pins[stream]
        for item in self._unclaimed:
            if item[0] == stream:
                pin[1] += 1
                lane.own.append(item[1])
            else:
                keep.append(item)
        self._unclaimed = keep

    def done(self, batch: list[kombu.Message], outcomes: list[Settle]) -> None:
        """Called on a lane's thread: queue the batch for settling and wake the event loop."""
        self._finished.append((batch, outcomes))
        with contextlib.suppress(BlockingIOError):  # full of wake-ups already: fine
            os.write(self._wake_w, b"\0")

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        self._settle_finished()

    def _settle_finished(self) -> None:
        while self._finished:
            batch, outcomes = self._finished.popleft()
            unsettled = self._unpin(batch)
            try:
                self.receiver.settle(batch, outcomes, unsettled=unsettled)
            except Exception as exc:  # the channel closed meanwhile: the broker redelivers
                logger.warning("inbox: could not settle %d message(s): %s", len(batch), exc)

    def _unpin(self, batch: list[kombu.Message]) -> list[Any]:
        """Unpin ``batch``'s streams; return the delivery tags still unsettled in any lane."""
        with self._cond:
            for message in batch:
                stream = self._routed.pop(message.delivery_tag, None)
                pin = self._pins.get(stream) if stream is not None else None
                if stream is not None and pin is not None:
                    pin[1] -= 1
                    if not pin[1]:
                        del self._pins[stream]
            return list(self._routed)

    def stop(self) -> None:
        """Stop the lanes: a batch in progress finishes and is settled; waiting deliveries are
        left unacknowledged for the broker to deliver again."""
        with self._cond:
            self.stopping = True
            self._cond.notify_all()
        self.receiver.halt()  # a batch held for the database goes back now
        deadline = time.monotonic() + STOP_TIMEOUT
        for lane in self.lanes:
            lane.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._settle_finished()
        self.hub.remove(self._wake_r)
        os.close(self._wake_r)
        os.close(self._wake_w)


class Sweeper:
    """Runs the retry sweep (``retry_due``) every ``interval`` seconds on a thread of its own."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="inbox-sweeper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from django.db import connections

        from inbox_outbox import health

        from .processing import retry_due

        try:
            while not self._stop.wait(self.interval):
                try:
                    retry_due()
                    health.beat("inbox-sweep")
                except Exception as exc:  # a database hiccup: the next sweep tries again
                    health.beat("inbox-sweep", ok=False, error=f"database: {exc}")
                    logger.warning("inbox: retry sweep failed", exc_info=True)
                    connections.close_all()
        finally:
            connections.close_all()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=STOP_TIMEOUT)
