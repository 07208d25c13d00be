"""Per-stream order: the one place that decides whether a keyed message runs, waits or is stale.

A *stream* is what one producer publishes under one (topic, key): (source, topic, key), seen
by one consumer. Its messages carry a *position*, the producer's (epoch, sequence): the
sequence counts 1, 2, 3… in commit order, and the epoch names the counter's incarnation, so a
counter that was purged, or restored from a backup, starts a new epoch instead of repeating
old numbers (``docs/wire-format.md``). The consumer's progress row holds the last position it
settled; this module locks it, judges each position against it, advances it, and finds the
next waiting message. Every path (live delivery, batch, drain, retry, sweeper, operator
actions) asks here instead of comparing sequences itself.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import connections
from django.db.models import Q
from django.db.models.functions import Now

from . import sql
from .models import InboxMessage, KeyProgress, Status


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a message stands in its stream; positions order by epoch, then sequence."""

    epoch: int
    sequence: int


@dataclass(frozen=True, slots=True, order=True)
class Stream:
    """One consumer's view of one producer's (topic, key)."""

    consumer: str
    source: str
    topic: str
    key: str


class Verdict(enum.Enum):
    #: The next position: run it now.
    RUN = "run"
    #: An earlier position of the stream is not settled yet: store it waiting.
    WAIT = "wait"
    #: At or before what was already settled (under an id not seen before): keep it, don't run.
    STALE = "stale"


def judge(last: Position, position: Position) -> Verdict:
    """The verdict on ``position`` in a stream whose last settled position is ``last``.

    A later epoch is a restarted counter: it begins again at sequence 1. An earlier epoch is
    stale, like an old sequence of the current one.
    """
    if position.epoch < last.epoch:
        return Verdict.STALE
    expected = 1 if position.epoch > last.epoch else last.sequence + 1
    if position.sequence < expected:
        return Verdict.STALE
    return Verdict.RUN if position.sequence == expected else Verdict.WAIT


def _stream_params(stream: Stream) -> list[str]:
    return [stream.consumer, stream.source, stream.topic, stream.key]


def lock(alias: str, stream: Stream) -> Position:
    """Lock the stream's progress row until commit (creating it) and return its position."""
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.LOCK_PROGRESS, _stream_params(stream))
        epoch, sequence = cursor.fetchone()
    return Position(int(epoch), int(sequence))


class Held:
    """The progress of streams locked until commit by :func:`lock_all`, kept in memory.

    A batch judges and settles its messages against it instead of asking the database again
    for each one: the locks are held, so no other transaction moves these streams. What was
    settled is written by :meth:`write`, one statement for the batch, before the commit.
    """

    def __init__(self, alias: str, positions: dict[Stream, Position]) -> None:
        self.alias = alias
        self._last = positions
        self._settled: dict[Stream, Position] = {}

    def last(self, stream: Stream) -> Position:
        """The stream's last settled position (one locked by :func:`lock_all`)."""
        return self._last[stream]

    def settle(self, stream: Stream, position: Position) -> None:
        """:func:`settle`, for a held stream: forward only, written by :meth:`write`."""
        if position > self._last[stream]:
            self._last[stream] = self._settled[stream] = position

    def write(self) -> None:
        """Write what was settled, inside the transaction that holds the locks: one statement
        for every stream (:meth:`settle` let only forward moves through)."""
        settled = sorted(self._settled.items())
        with connections[self.alias].cursor() as cursor:
            for start in range(0, len(settled), 500):  # 3,000 parameters a statement at most
                chunk = settled[start : start + 500]
                params: list[str | int] = []
                for stream, position in chunk:
                    params += [*_stream_params(stream), position.epoch, position.sequence]
                cursor.execute(sql.set_progress_rows(len(chunk)), params)
        self._settled.clear()


def lock_all(alias: str, streams: Iterable[Stream]) -> Held:
    """Lock the progress rows of ``streams`` in one deterministic order (sorted), so that two
    transactions locking overlapping streams never deadlock; return their progress, held."""
    ordered = sorted(set(streams))
    if not ordered:
        return Held(alias, {})
    params = [value for stream in ordered for value in _stream_params(stream)]
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.lock_progress_rows(len(ordered)), params)
        rows = cursor.fetchall()
    return Held(
        alias,
        {
            Stream(consumer, source, topic, key): Position(int(epoch), int(sequence))
            for consumer, source, topic, key, epoch, sequence in rows
        },
    )


def with_waiting(alias: str, streams: Iterable[Stream]) -> set[Stream]:
    """Those of ``streams`` that have a waiting row: the only ones a drain can move."""
    ordered = sorted(set(streams))
    found: set[Stream] = set()
    with connections[alias].cursor() as cursor:
        for start in range(0, len(ordered), 500):  # 2,000 parameters a statement at most
            chunk = ordered[start : start + 500]
            params = [value for stream in chunk for value in _stream_params(stream)]
            cursor.execute(sql.streams_with_waiting_rows(len(chunk)), params)
            found.update(Stream(*row) for row in cursor.fetchall())
    return found


def settle(alias: str, stream: Stream, position: Position) -> None:
    """Record ``position`` as settled (handled, dead or void): the stream moves on to it.

    Only forward: settling a position at or before the progress changes nothing. The caller
    holds the progress lock and has judged ``position`` to run (or forces past a gap).
    """
    earlier = Q(epoch__lt=position.epoch) | Q(
        epoch=position.epoch, last_sequence__lt=position.sequence
    )
    KeyProgress.objects.using(alias).filter(
        earlier,
        consumer=stream.consumer,
        source=stream.source,
        topic=stream.topic,
        key=stream.key,
    ).update(epoch=position.epoch, last_sequence=position.sequence, updated_at=Now())


def is_next(alias: str, stream: Stream, position: Position) -> bool:
    """Lock the stream and tell whether ``position`` is the one it waits for."""
    return judge(lock(alias, stream), position) is Verdict.RUN


def waiting_head(alias: str, stream: Stream) -> InboxMessage | None:
    """The stream's earliest waiting row that no other worker holds, locked until commit."""
    return (
        InboxMessage.objects.using(alias)
        .filter(
            consumer=stream.consumer,
            source=stream.source,
            topic=stream.topic,
            key=stream.key,
            status=Status.WAITING,
        )
        .order_by("epoch", "sequence")
        .select_for_update(skip_locked=True)
        .first()
    )


def dead_next(alias: str, stream: Stream, last: Position) -> InboxMessage | None:
    """A dead row standing at the stream's next position, if there is one: an operator marked
    it dead while it waited behind a gap, and now that its turn has come, the stream passes
    over it (settling it) instead of waiting for it."""
    following = Q(epoch=last.epoch, sequence=last.sequence + 1) | Q(
        epoch__gt=last.epoch, sequence=1
    )
    return (
        InboxMessage.objects.using(alias)
        .filter(
            following,
            consumer=stream.consumer,
            source=stream.source,
            topic=stream.topic,
            key=stream.key,
            status=Status.DEAD,
        )
        .order_by("epoch")
        .first()
    )


def stream_of_row(row: InboxMessage) -> Stream | None:
    """The stream of a stored row, or None for a keyless one."""
    if row.key is None or row.sequence is None:
        return None
    return Stream(row.consumer, row.source, row.topic, row.key)


def position_of_row(row: InboxMessage) -> Position:
    return Position(row.epoch or 0, row.sequence or 0)
