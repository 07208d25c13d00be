"""The relay: claim due outbox rows, publish them with confirms, record the outcome.

Claiming happens in a short transaction (``SELECT … FOR UPDATE SKIP LOCKED``) that
writes a lease (owner + expiry); publishing happens outside any transaction; the
outcome is written back only where the lease is still ours. A relay that dies
simply lets its leases expire, so any number of relays can run without a leader.

Per-key order: a keyed message is claimable only as part of a run that starts at
the lowest unsent sequence of its (topic, key). A message of a key whose head is
leased elsewhere, waiting for a retry, or locked by another claim, stays put.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections, router, transaction
from django.db.models import (
    BooleanField,
    DateTimeField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    TextField,
)
from django.db.models.functions import Cast, Now

from inbox_outbox import health, tracing
from inbox_outbox.backoff import backoff_seconds
from inbox_outbox.cloudevents import Outgoing
from inbox_outbox.conf import broker_url, get_settings
from inbox_outbox.logfields import fields

from . import scheduling, sql, voids
from .exceptions import BrokerUnavailable
from .lease import LeaseKeeper
from .listening import open_listener
from .models import OutboxMessage, Status
from .publisher import BatchResult, Publisher, encode_error, make_publisher

if TYPE_CHECKING:
    import psycopg

    #: The connection a relay LISTENs on for publishers' nudges (PostgreSQL).
    Listener = psycopg.Connection[Any]

logger = logging.getLogger(__name__)


#: Keys the claim's walk visits at most per claim. A walk that stops at this budget before
#: filling its batch leaves :attr:`Relay.busy` set, and the next claim goes on from there:
#: each claim is bounded however many keys are blocked, and each key is visited once a lap.
KEYS_PER_CLAIM = 1000

#: Backoff (first and longest wait, seconds) for messages the broker refused (nacked): a full
#: or leaderless queue. Never charged an attempt; retried after the wait, so a relay does not
#: spin against a full queue.
REFUSED_BACKOFF = (0.5, 15.0)

#: Where a walk over the keys begins: before the first (topic, key).
START = ("", "")


@dataclass(frozen=True, slots=True)
class Run:
    """A key's claimable run as :func:`key_runs` found it: ``n`` rows from its head."""

    topic: str
    key: str
    epoch: int
    head: int
    n: int


@dataclass(frozen=True, slots=True)
class Walk:
    """What one walk over the keys found, and where it stopped."""

    runs: list[Run]
    last: tuple[str, str] | None  # the last key visited
    visited: int
    found: int  # rows in ``runs``
    finished: bool  # no key was left before the bound: it stopped for neither limit


def key_runs(
    using: str,
    *,
    after: tuple[str, str],
    limit: int,
    budget: int,
    until: tuple[str, str] | None = None,
) -> Walk:
    """The claimable run of each key after ``after`` (up to ``until``, inclusive), until
    ``limit`` rows are found or ``budget`` keys visited. The one place where the relay
    decides which keyed messages may go (``sql.key_runs``)."""
    connection = connections[using]
    stop = until or START
    params: list[Any] = [*after, limit, budget, int(until is not None), *stop]
    with connection.cursor() as cursor:
        cursor.execute(sql.key_runs(connection.vendor), params)
        rows = cursor.fetchall()
    if not rows:
        return Walk(runs=[], last=None, visited=0, found=0, finished=True)
    runs = [Run(t, k, int(e), int(h), int(n)) for _, t, k, e, h, n, _ in rows if n]
    depth, topic, key, _, _, run, before = rows[-1]
    found = int(before) + int(run)
    return Walk(
        runs=runs,
        last=(topic, key),
        visited=int(depth),
        found=found,
        finished=depth < budget and found < limit,
    )


@dataclass(slots=True)
class Lap:
    """A walk around the keys spread over several claims: from the cursor at its start,
    to the last key, then from the first key back to ``end``."""

    end: tuple[str, str]
    wrapped: bool = False


@dataclass(frozen=True, slots=True)
class Claimed:
    """One claim: rows to send, rows found expired, and rows that cannot go on the wire."""

    batch: list[Outgoing]
    expired: list[uuid.UUID]
    broken: dict[uuid.UUID, str]


def _first(runs: list[Run], room: int) -> list[Run]:
    """The runs that fit in ``room`` rows, the last one cut to a prefix."""
    taken = []
    for run in runs:
        if room <= 0:
            break
        taken.append(run if run.n <= room else replace(run, n=room))
        room -= run.n
    return taken


_OUTGOING_FIELDS = ("id", "topic", "key", "sequence", "epoch", "voids", "created_at", "expires_at")


def _outgoing(queryset: QuerySet[OutboxMessage]) -> Claimed:
    """``queryset``'s rows as they go on the wire (the payload stays JSON text); those past
    their expiry on the database's clock; those whose headers cannot be read."""
    rows = queryset.annotate(
        payload_json=Cast("payload", TextField()),
        headers_text=Cast("headers", TextField()),
        expired=ExpressionWrapper(Q(expires_at__lte=Now()), output_field=BooleanField()),
    ).values(*_OUTGOING_FIELDS, "payload_json", "headers_text", "expired")
    batch, expired, broken = [], [], {}
    for row in rows:
        text = row.pop("headers_text")
        if row.pop("expired"):
            expired.append(row["id"])
            continue
        try:
            headers = json.loads(text) if text not in (None, "{}") else {}
        except (ValueError, RecursionError) as exc:
            broken[row["id"]] = encode_error(exc)
            continue
        batch.append(Outgoing(headers=headers, **row))
    return Claimed(batch=batch, expired=expired, broken=broken)


class Relay:
    """Moves outbox rows to the broker. Safe to run in any number of processes."""

    def __init__(
        self,
        *,
        using: str | None = None,
        publisher: Publisher | None = None,
        batch_size: int | None = None,
        owner: str | None = None,
    ) -> None:
        conf = get_settings()
        self.using = using or router.db_for_write(OutboxMessage)
        self.batch_size = batch_size or conf.relay_batch_size
        self.owner = owner or f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.publisher = publisher or make_publisher(
            broker_url(),
            exchange=conf.exchange,
            source=conf.service,
            confirm_timeout=conf.relay_confirm_timeout,
        )
        self.publisher = tracing.observed(self.publisher)  # send spans, relay metrics
        self.stats: dict[str, int] = defaultdict(int)
        self._in_flight: list[Outgoing] | None = None
        self._cursor = START  # the claim's walk over the keys goes on after this one
        self._lap: Lap | None = None
        self._turn = 0
        self._refusals = 0  # batches in a row with a message the broker refused
        self.keeper = LeaseKeeper(
            using=self.using,
            owner=self.owner,
            lease_seconds=conf.relay_lease_seconds,
            stall_after=conf.relay_confirm_timeout + conf.relay_lease_seconds,
        )

    # -- one batch -----------------------------------------------------------------
    def run_once(self) -> int:
        """Claim the next batch, settle the one in flight, send the new one.

        The next claim runs while the previous batch's confirms travel, so database and
        broker work overlap. It cannot take a later message of a key in flight: that key's
        head is still unsent (leased by us). Returns how many rows were settled (sent,
        failed, dead or expired); :attr:`busy` tells whether a batch is still in flight.
        """
        claimed = self._claim()
        batch, expired = claimed.batch, claimed.expired
        self.keeper.keep(m.id for m in [*(self._in_flight or []), *batch])
        if expired:
            self._give_up(
                expired, status=Status.EXPIRED, error="expired before it could be published"
            )
            self.stats["expired"] += len(expired)
        for mid, error in claimed.broken.items():
            self._fail(mid, error)
        self.stats["failed"] += len(claimed.broken)
        expired = [*expired, *claimed.broken]  # settled without a send
        try:
            settled = len(expired) + self._finish()
            if batch:
                self.publisher.send(batch)
                self._in_flight = batch
        except BrokerUnavailable:
            self._release(batch)
            raise
        finally:
            self.keeper.keep(m.id for m in self._in_flight or [])
        return settled

    @property
    def busy(self) -> bool:
        """A batch is in flight, or the claim's walk has keys left to visit this lap."""
        return self._in_flight is not None or self._lap is not None

    def _finish(self) -> int:
        """Collect and record the batch in flight, if any; return its size."""
        batch, self._in_flight = self._in_flight, None
        if batch is None:
            return 0
        try:
            result = self.publisher.collect()
        except BrokerUnavailable:
            self._release(batch)
            raise
        self._record(batch, result)
        return len(batch)

    def _release(self, batch: list[Outgoing]) -> None:
        """Give up our leases without charging an attempt (the broker is at fault)."""
        if batch:
            self._messages([m.id for m in batch]).update(lease_owner="", lease_until=None)

    def close(self) -> None:
        """Settle the batch in flight and release the broker connection."""
        try:
            self._finish()
        except BrokerUnavailable as exc:
            logger.warning("outbox relay: in-flight batch left for the next relay: %s", exc)
        finally:
            self.keeper.stop()
            self.publisher.close()

    def _messages(self, ids: list[uuid.UUID]):  # type: ignore[no-untyped-def]
        """Our leased rows among ``ids``: the only rows this relay may write back."""
        return OutboxMessage.objects.using(self.using).filter(id__any=ids, lease_owner=self.owner)

    def _claim(self) -> Claimed:
        """Lease the next batch: keyed runs and keyless rows, half the batch each when both
        are waiting, the rest to whichever has more."""
        lease = get_settings().relay_lease_seconds
        vendor = connections[self.using].vendor
        with transaction.atomic(using=self.using):
            self._promote()
            runs = self._walk(self.batch_size)
            keyed = sum(run.n for run in runs)
            self._turn ^= 1  # with an odd batch, the odd row goes to each side in turn
            keyless_room = self.batch_size - min(keyed, (self.batch_size + self._turn) // 2)
            ids = self._lease(sql.claim_keyless(vendor), [keyless_room, self.owner, lease])
            runs = _first(runs, self.batch_size - len(ids))
            if runs:
                runs_json = json.dumps([asdict(run) for run in runs])
                ids += self._lease(sql.lease_runs(vendor), [runs_json, self.owner, lease])
            if not ids:
                return Claimed(batch=[], expired=[], broken={})
            claimed = _outgoing(OutboxMessage.objects.using(self.using).filter(id__any=ids))
        batch = claimed.batch
        # Keyless messages in id order; each key's run in sequence order.
        batch.sort(key=lambda m: (m.key is not None, m.topic, m.key or "", m.sequence or 0, m.id))
        if claimed.broken:
            # A row that cannot go out holds back the rest of its key, as a failed one does.
            stuck = set(
                OutboxMessage.objects.using(self.using)
                .filter(id__any=list(claimed.broken), key__isnull=False)
                .values_list("topic", "key")
            )
            held = [m.id for m in batch if m.key is not None and (m.topic, m.key) in stuck]
            self._messages(held).update(lease_owner="", lease_until=None)
            batch = [m for m in batch if m.id not in held]
        return Claimed(batch=batch, expired=claimed.expired, broken=claimed.broken)

    def _promote(self) -> int:
        """Make due scheduled rows pending in the claim's transaction, at most
        ``sql.PROMOTE_STEP`` (``outbox.scheduling``): the claim then takes them at once."""
        promoted = scheduling.promote_due(using=self.using)
        self.stats["promoted"] += promoted
        return promoted

    def _lease(self, statement: str, params: list[Any]) -> list[uuid.UUID]:
        with connections[self.using].cursor() as cursor:
            cursor.execute(statement, params)
            return [_uuid(value) for (value,) in cursor.fetchall()]

    def _walk(self, limit: int) -> list[Run]:
        """Runs of up to ``limit`` rows, walking on from where the last claim stopped: at
        most ``KEYS_PER_CLAIM`` keys, around the keys once per lap."""
        if self._lap is None:
            self._lap = Lap(end=self._cursor)  # the ring from here back to here
        lap = self._lap
        runs: list[Run] = []
        budget, found = KEYS_PER_CLAIM, 0
        while budget > 0 and found < limit:
            walk = key_runs(
                self.using,
                after=self._cursor,
                until=lap.end if lap.wrapped else None,
                limit=limit - found,
                budget=budget,
            )
            runs += walk.runs
            found += walk.found
            budget -= walk.visited
            if not walk.finished:  # stopped by the budget or the batch: go on after it
                assert walk.last is not None
                self._cursor = walk.last
                break
            if lap.wrapped or lap.end == START:  # back where the lap began: all visited
                self._cursor, self._lap = lap.end, None
                return runs
            lap.wrapped, self._cursor = True, START
        if found >= limit:
            self._lap = None  # the batch is full; the next claim starts a lap of its own
        return runs

    def _record(self, batch: list[Outgoing], result: BatchResult) -> None:
        conf = get_settings()
        failed: dict[uuid.UUID, str] = dict(result.failed)
        if conf.unroutable == "retry":
            for mid in result.unroutable:
                failed[mid] = "unroutable: no queue is bound for this topic"
        elif conf.unroutable == "dead" and result.unroutable:
            self._give_up(
                list(result.unroutable),
                status=Status.DEAD,
                error="unroutable: no queue is bound for this topic",
                charge=True,
            )
        ok = set(result.sent)
        if conf.unroutable == "ignore":
            ok |= result.unroutable
        # A key whose message failed keeps the rest of its run unsent, to be sent again after it.
        blocked: set[tuple[str, str]] = set()
        held: list[uuid.UUID] = []
        for message in batch:
            group = (message.topic, message.key or "")
            if message.key is None:
                continue
            if group in blocked:
                ok.discard(message.id)
                if message.id not in failed:
                    held.append(message.id)
            elif message.id in failed or message.id not in ok:
                blocked.add(group)
        if ok:
            self._messages(list(ok)).update(
                status=Status.SENT,
                sent_at=Now(),
                attempts=F("attempts") + 1,
                lease_owner="",
                lease_until=None,
                last_error="",
            )
        for mid, error in failed.items():
            self._fail(mid, error)
        refused = [m.id for m in batch if m.id in result.refused and m.id not in failed]
        if refused:
            self._refuse(refused)
        elif ok:
            self._refusals = 0
        unconfirmed = [
            m.id
            for m in batch
            if m.id not in ok
            and m.id not in failed
            and m.id not in result.unroutable
            and m.id not in result.refused
        ]
        if unconfirmed or held:
            self._messages(unconfirmed + held).update(lease_owner="", lease_until=None)
        self.stats["sent"] += len(ok)
        self.stats["failed"] += len(failed)
        self.stats["refused"] += len(refused)

    def _refuse(self, ids: list[uuid.UUID]) -> None:
        """The broker nacked ``ids`` (a queue full or without a leader): not confirmed, so
        not sent, and not their fault, so not charged. They wait a backoff that grows while
        refusals go on (on the database's clock), so the relay never spins on a full queue."""
        self._refusals += 1
        delay = backoff_seconds(self._refusals, *REFUSED_BACKOFF)
        logger.warning(
            "outbox relay: the broker refused %d message(s) (a queue is full or unavailable); "
            "trying again in %.1fs, no attempt charged",
            len(ids),
            delay,
        )
        self._messages(ids).update(
            available_at=ExpressionWrapper(
                Now() + timedelta(seconds=delay), output_field=DateTimeField()
            ),
            lease_owner="",
            lease_until=None,
        )

    def _give_up(
        self, ids: list[uuid.UUID], *, status: str, error: str, charge: bool = False
    ) -> None:
        """Settle ``ids`` as ``dead`` or ``expired`` without a send, and announce the keyed
        ones void in the same transaction, so consumers need not wait out their gap."""
        changes: dict[str, Any] = {
            "status": status,
            "lease_owner": "",
            "lease_until": None,
            "last_error": error,
        }
        if charge:
            changes["attempts"] = F("attempts") + 1
        with transaction.atomic(using=self.using):
            self._messages(ids).update(**changes)
            voids.announce(ids, using=self.using)

    def _fail(self, mid: uuid.UUID, error: str) -> None:
        """Charge ``mid`` an attempt: back off (on the database's clock), or dead at the limit."""
        conf = get_settings()
        row = self._messages([mid]).values_list("attempts", flat=True).first()
        if row is None:
            return
        attempts = row + 1
        dead = attempts >= conf.relay_max_attempts
        delay = backoff_seconds(attempts, conf.relay_backoff_base, conf.relay_backoff_max)
        with transaction.atomic(using=self.using):
            self._messages([mid]).update(
                status=Status.DEAD if dead else Status.FAILED,
                attempts=attempts,
                last_error=error,
                available_at=ExpressionWrapper(
                    Now() + timedelta(seconds=delay), output_field=DateTimeField()
                ),
                lease_owner="",
                lease_until=None,
            )
            if dead:
                voids.announce([mid], using=self.using)
        if dead:
            logger.error(
                "outbox: message %s is dead after %d attempts: %s",
                mid,
                attempts,
                error,
                extra=fields(message_id=mid, attempt=attempts),
            )
        else:
            logger.warning(
                "outbox: message %s failed (attempt %d), retrying in %.0fs: %s",
                mid,
                attempts,
                delay,
                error,
                extra=fields(message_id=mid, attempt=attempts),
            )

    # -- loops ----------------------------------------------------------------------
    def drain(self, *, max_batches: int | None = None, linger: bool = False) -> int:
        """Publish until nothing is due (or ``max_batches``); return rows settled.

        With ``linger``, look once more ``2 * NUDGE_INTERVAL`` seconds after finding nothing, for
        messages whose publishers folded their nudge into the one that started this drain.
        """
        total = batches = 0
        lingered = not linger
        try:
            while max_batches is None or batches < max_batches:
                settled = self.run_once()
                batches += 1
                total += settled
                if not settled and not self.busy:
                    if lingered:
                        break
                    lingered = True
                    time.sleep(2 * get_settings().nudge_interval)
        finally:
            total += self._finish()
            self.keeper.stop()
        return total

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set; wakes on PostgreSQL NOTIFY, else polls."""
        conf = get_settings()
        listener: Listener | None = None
        outage = 0
        lingered = False  # also look again shortly after start-up: a nudge may predate LISTEN
        try:
            # One database connection for the life of the loop: a failed one is closed in the
            # DatabaseError branch and reopened by the next query.
            while not stop.is_set():
                try:
                    if listener is None:
                        listener = self._listen()
                    settled = self.run_once()
                    outage = 0
                    health.beat("relay")
                except BrokerUnavailable as exc:
                    health.beat("relay", ok=False, error=f"broker: {exc}")
                    outage += 1
                    delay = backoff_seconds(outage, 0.5, 15.0)
                    logger.warning(
                        "outbox relay: broker unavailable (%s); retrying in %.1fs", exc, delay
                    )
                    stop.wait(delay)
                    continue
                except DatabaseError as exc:
                    health.beat("relay", ok=False, error=f"database: {exc}")
                    outage += 1
                    delay = backoff_seconds(outage, 0.5, 15.0)
                    logger.warning(
                        "outbox relay: database error (%s); retrying in %.1fs", exc, delay
                    )
                    connections[self.using].close()
                    _close(listener)
                    listener = None
                    stop.wait(delay)
                    continue
                if settled or self.busy:
                    lingered = False
                elif not lingered:
                    # A process folds nudges that come within NUDGE_INTERVAL of each other:
                    # look once more shortly, in case this batch's nudge stood for a later commit.
                    lingered = True
                    listener = self._wait(listener, 2 * conf.nudge_interval, stop)
                else:
                    listener = self._wait(listener, self._idle_wait(), stop)
        finally:
            _close(listener)
            self.close()

    def _idle_wait(self) -> float:
        """How long an idle relay waits: the poll interval, or less when a scheduled message
        falls due sooner (no nudge announces that)."""
        poll = get_settings().relay_poll_interval
        try:
            due_in = scheduling.seconds_to_next_due(using=self.using)
        except DatabaseError:  # the next claim meets it again and backs off
            return poll
        if due_in is None:
            return poll
        return min(poll, max(due_in, 0.01))

    def _listen(self) -> Listener | None:
        listener: Listener | None = open_listener(connections[self.using])
        return listener

    def _wait(
        self, listener: Listener | None, timeout: float, stop: threading.Event
    ) -> Listener | None:
        if listener is None:
            stop.wait(timeout)
            return None
        try:
            for _ in listener.notifies(timeout=timeout, stop_after=1):
                pass
        except Exception as exc:  # a dropped listener only costs latency until reconnect
            logger.warning("outbox relay: LISTEN connection lost (%s)", exc)
            _close(listener)
            return None
        return listener


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    """An id as the driver returns it (SQLite: 32 hex digits) as a UUID."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def _close(listener: Listener | None) -> None:
    if listener is not None:
        try:
            listener.close()
        except Exception:
            logger.debug("outbox relay: error closing listener", exc_info=True)
