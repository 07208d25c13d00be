"""``manage.py outbox_relay``: the long-running relay process."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inbox_outbox import endpoint
from outbox.exceptions import BrokerUnavailable
from outbox.relay import Relay

logger = logging.getLogger("outbox.relay")


class Command(BaseCommand):
    help = "Publish outbox messages to the broker. Safe to run in any number of copies."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--once", action="store_true", help="Drain the backlog of due messages, then exit."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Messages claimed per batch (default: RELAY_BATCH_SIZE).",
        )
        parser.add_argument("--database", default=None, help="Database alias of the outbox.")

    def handle(
        self, *args: Any, once: bool, batch_size: int | None, database: str | None, **options: Any
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be a positive integer.")
        relay = Relay(using=database, batch_size=batch_size)
        if once:
            try:
                settled = relay.drain()
            except BrokerUnavailable as exc:
                raise CommandError(
                    f"{exc}. Nothing was lost; run the relay again when the broker is back."
                ) from exc
            finally:
                relay.close()
            self.stdout.write(
                f"outbox relay: settled {settled} message(s) "
                f"({dict(relay.stats) or 'nothing due'})."
            )
            return
        stop = threading.Event()

        def _stop(signum: int, frame: Any) -> None:
            logger.info("outbox relay: signal %s, finishing the current batch", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.stdout.write(f"outbox relay {relay.owner} running; SIGTERM or Ctrl-C stops it.")
        self.stdout.flush()
        endpoint.serve()  # TELEMETRY_PORT: /metrics, /live, /ready
        relay.run(stop)
        self.stdout.write(f"outbox relay stopped: {dict(relay.stats)}")
