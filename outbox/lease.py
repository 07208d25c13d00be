"""Keeping a relay's leases alive while it works, so that leases can be short.

A claim leases its rows for ``RELAY_LEASE_SECONDS``. While the relay holds them (the batch in
flight and the one just claimed), a :class:`LeaseKeeper` thread renews them every third of
that time, on the database's clock. A relay that dies stops renewing, and its rows are
claimable again within one lease: a killed relay holds its keys for seconds, not a minute.

A relay that stops making progress (its loop has not reported for longer than a confirm
timeout plus a lease) is not kept alive either: its rows lapse as if it had died.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable

from django.db import DatabaseError, connections

from . import sql

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of one relay's rows from a thread of its own."""

    def __init__(self, *, using: str, owner: str, lease_seconds: float, stall_after: float) -> None:
        self.using = using
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self.stall_after = stall_after
        self._ids: list[uuid.UUID] = []
        self._progress = time.monotonic()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0

    def keep(self, ids: Iterable[uuid.UUID]) -> None:
        """The rows this relay holds now (replacing the previous set); also a sign of life."""
        with self._lock:
            self._ids = list(ids)
            self._progress = time.monotonic()
            if self._ids and (self._thread is None or not self._thread.is_alive()):
                self._wake.clear()
                self._thread = threading.Thread(
                    target=self._run, name=f"lease-keeper {self.owner}", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the relay settled or released everything it held)."""
        with self._lock:
            self._ids = []
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        # Each step is bounded: one wait, one short UPDATE by primary key.
        while not self._wake.wait(self.interval):
            with self._lock:
                ids, stalled = self._ids, time.monotonic() - self._progress > self.stall_after
            if not ids or stalled:
                if stalled:
                    logger.warning(
                        "outbox relay %s made no progress for %.0fs; letting its leases lapse",
                        self.owner,
                        self.stall_after,
                    )
                return
            self._renew(ids)

    def _renew(self, ids: list[uuid.UUID]) -> None:
        connection = connections[self.using]
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql.RENEW_LEASES, [self.lease_seconds, ids, self.owner])
            self.renewals += 1
        except DatabaseError as exc:  # the next renewal tries again; the lease may lapse
            logger.warning("outbox relay %s could not renew its leases: %s", self.owner, exc)
        finally:
            # A connection of its own, closed at once: nothing is left open between renewals.
            connection.close()
