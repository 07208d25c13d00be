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
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, connections, router, transaction
from django.db.models import F, Min, Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from inbox_outbox.backoff import backoff_seconds
from inbox_outbox.cloudevents import Outgoing
from inbox_outbox.conf import broker_url, get_settings

from .exceptions import BrokerUnavailable
from .lease import LeaseKeeper
from .listening import open_listener
from .models import UNSENT, OutboxMessage, Status
from .publisher import BatchResult, Publisher, make_publisher

logger = logging.getLogger(__name__)


#: Candidates looked at per claim, in batches: keyed messages behind a key already in flight
#: are not claimable, so a relay that finds too few in its first batch looks past them for
#: other keys' runs.
CANDIDATE_WINDOW = 4


@dataclass(frozen=True, slots=True)
class Candidate:
    """An unsent row the claim considers: enough to decide whether its key lets it go."""

    id: uuid.UUID
    topic: str
    key: str | None
    sequence: int | None


_CANDIDATE_FIELDS = ("id", "topic", "key", "sequence")


def _candidates(queryset: QuerySet[OutboxMessage]) -> list[Candidate]:
    return [Candidate(**row) for row in queryset.values(*_CANDIDATE_FIELDS)]


def _outgoing(queryset: QuerySet[OutboxMessage]) -> list[Outgoing]:
    """``queryset``'s rows as they go on the wire; the payload stays JSON text."""
    rows = queryset.annotate(
        payload_json=Cast("payload", TextField()), headers_text=Cast("headers", TextField())
    ).values(
        *_CANDIDATE_FIELDS,
        "epoch",
        "voids",
        "payload_json",
        "headers_text",
        "created_at",
        "expires_at",
    )
    return [
        Outgoing(
            headers=json.loads(headers)
            if (headers := row.pop("headers_text")) not in (None, "{}")
            else {},
            **row,
        )
        for row in rows
    ]


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
        self.stats: dict[str, int] = defaultdict(int)
        self._in_flight: list[Outgoing] | None = None
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
        batch, expired = self._claim()
        self.keeper.keep(m.id for m in [*(self._in_flight or []), *batch])
        if expired:
            self._messages(expired).update(
                status=Status.EXPIRED,
                lease_owner="",
                lease_until=None,
                last_error="expired before it could be published",
            )
            self.stats["expired"] += len(expired)
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
        return self._in_flight is not None

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

    def _claim(self) -> tuple[list[Outgoing], list[uuid.UUID]]:
        conf = get_settings()
        now = timezone.now()
        base = OutboxMessage.objects.using(self.using)
        with transaction.atomic(using=self.using):
            due = (
                base.filter(status__in=UNSENT, available_at__lte=now)
                .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
                .order_by("id")
                .select_for_update(skip_locked=True)
            )
            # Lock one batch first, reading what publishing needs as it goes: each locked
            # row costs a write, and when nothing is keyed (or no key is in flight) the
            # first batch is all claimable.
            rows = {row.id: row for row in _outgoing(due[: self.batch_size])}
            if not rows:
                return [], []
            candidates = [Candidate(r.id, r.topic, r.key, r.sequence) for r in rows.values()]
            claimable = set(self._in_key_order(candidates))
            if len(claimable) < self.batch_size and len(candidates) == self.batch_size:
                more = due.filter(id__gt=candidates[-1].id)
                candidates += _candidates(more[: self.batch_size * (CANDIDATE_WINDOW - 1)])
                claimable = set(self._in_key_order(candidates))
            ids = [c.id for c in candidates if c.id in claimable][: self.batch_size]  # oldest first
            if not ids:
                return [], []
            missing = [mid for mid in ids if mid not in rows]
            if missing:  # claimable rows found past the first batch, locked but not yet read
                rows.update((row.id, row) for row in _outgoing(base.filter(id__any=missing)))
            base.filter(id__any=ids).update(
                lease_owner=self.owner,
                lease_until=now + timedelta(seconds=conf.relay_lease_seconds),
            )
        batch, expired = [], []
        for mid in ids:
            row = rows[mid]
            if row.expires_at is not None and row.expires_at <= now:
                expired.append(mid)
            else:
                batch.append(row)
        # Keyless messages in id order; each key's run in sequence order.
        batch.sort(key=lambda m: (m.key is not None, m.topic, m.key or "", m.sequence or 0, m.id))
        return batch, expired

    def _in_key_order(self, candidates: list[Candidate]) -> list[uuid.UUID]:
        """Drop keyed candidates whose earlier messages are not claimable with them."""
        keyed: dict[tuple[str, str], list[tuple[int, uuid.UUID]]] = defaultdict(list)
        ids = []
        for c in candidates:
            if c.key is None or c.sequence is None:
                ids.append(c.id)
            else:
                keyed[(c.topic, c.key)].append((c.sequence, c.id))
        if not keyed:
            return ids
        condition = Q()
        for topic, key in keyed:
            condition |= Q(topic=topic, key=key)
        heads = {
            (topic, key): head
            for topic, key, head in OutboxMessage.objects.using(self.using)
            .filter(condition, status__in=UNSENT)
            .order_by()
            .values("topic", "key")
            .annotate(head=Min("sequence"))
            .values_list("topic", "key", "head")
        }
        for group, members in keyed.items():
            expected = heads.get(group)
            for seq, mid in sorted(members):
                if seq != expected:
                    break
                ids.append(mid)
                expected += 1
        return ids

    def _record(self, batch: list[Outgoing], result: BatchResult) -> None:
        conf = get_settings()
        now = timezone.now()
        failed: dict[uuid.UUID, str] = dict(result.failed)
        if conf.unroutable == "retry":
            for mid in result.unroutable:
                failed[mid] = "unroutable: no queue is bound for this topic"
        elif conf.unroutable == "dead":
            self._messages(list(result.unroutable)).update(
                status=Status.DEAD,
                attempts=F("attempts") + 1,
                lease_owner="",
                lease_until=None,
                last_error="unroutable: no queue is bound for this topic",
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
                sent_at=now,
                attempts=F("attempts") + 1,
                lease_owner="",
                lease_until=None,
                last_error="",
            )
        for mid, error in failed.items():
            self._fail(mid, error, now)
        unconfirmed = [
            m.id
            for m in batch
            if m.id not in ok and m.id not in failed and m.id not in result.unroutable
        ]
        if unconfirmed or held:
            self._messages(unconfirmed + held).update(lease_owner="", lease_until=None)
        self.stats["sent"] += len(ok)
        self.stats["failed"] += len(failed)

    def _fail(self, mid: uuid.UUID, error: str, now) -> None:  # type: ignore[no-untyped-def]
        conf = get_settings()
        row = self._messages([mid]).values_list("attempts", flat=True).first()
        if row is None:
            return
        attempts = row + 1
        dead = attempts >= conf.relay_max_attempts
        delay = backoff_seconds(attempts, conf.relay_backoff_base, conf.relay_backoff_max)
        self._messages([mid]).update(
            status=Status.DEAD if dead else Status.FAILED,
            attempts=attempts,
            last_error=error,
            available_at=now + timedelta(seconds=delay),
            lease_owner="",
            lease_until=None,
        )
        if dead:
            logger.error("outbox: message %s is dead after %d attempts: %s", mid, attempts, error)

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
        listener = None
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
                except BrokerUnavailable as exc:
                    outage += 1
                    delay = backoff_seconds(outage, 0.5, 15.0)
                    logger.warning(
                        "outbox relay: broker unavailable (%s); retrying in %.1fs", exc, delay
                    )
                    stop.wait(delay)
                    continue
                except DatabaseError as exc:
                    outage += 1
                    delay = backoff_seconds(outage, 0.5, 15.0)
                    logger.warning(
                        "outbox relay: database error (%s); retrying in %.1fs", exc, delay
                    )
                    connections[self.using].close()
                    listener = _close(listener)
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
                    listener = self._wait(listener, conf.relay_poll_interval, stop)
        finally:
            _close(listener)
            self.close()

    def _listen(self):  # type: ignore[no-untyped-def]
        return open_listener(connections[self.using])

    def _wait(self, listener, timeout: float, stop: threading.Event):  # type: ignore[no-untyped-def]
        if listener is None:
            stop.wait(timeout)
            return None
        try:
            for _ in listener.notifies(timeout=timeout, stop_after=1):
                pass
        except Exception as exc:  # a dropped listener only costs latency until reconnect
            logger.warning("outbox relay: LISTEN connection lost (%s)", exc)
            return _close(listener)
        return listener


def _close(listener):  # type: ignore[no-untyped-def]
    if listener is not None:
        try:
            listener.close()
        except Exception:
            logger.debug("outbox relay: error closing listener", exc_info=True)
    return None
