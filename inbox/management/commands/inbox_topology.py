"""``manage.py inbox_topology``: the service's broker topology as declared, checked against
the broker; ``--declare`` declares it, ``--prune`` unbinds topics no handler declares."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inbox import bindings, topology, topology_check
from inbox_outbox.broker import connect


class Command(BaseCommand):
    help = (
        "Show the exchanges, queues (type, delivery limit, dead-lettering) and bindings this "
        "service declares and whether the broker has them so; --check exits non-zero when "
        "anything differs or a binding is stale, --declare declares the topology (as a "
        "starting worker does), --prune unbinds the topics no handler declares any more."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--check", action="store_true", help="Exit non-zero if the broker differs."
        )
        parser.add_argument(
            "--declare", action="store_true", help="Declare the topology first (idempotent)."
        )
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Unbind the topics the queue was bound to that no handler declares.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        connection = connect()
        try:
            if options["declare"]:
                try:
                    topology.declare(connection)
                except topology.TopologyMismatch as exc:
                    raise CommandError(str(exc)) from exc
                self.stdout.write("declared")
            if options["prune"]:
                removed = bindings.unbind_stale(connection)
                self.stdout.write(f"unbound: {', '.join(removed) if removed else 'nothing'}")
            report = topology_check.inspect(connection)
        except connection.connection_errors as exc:
            raise CommandError(f"the broker is not reachable: {exc}") from exc
        finally:
            connection.release()
        for found in report.objects:
            self.stdout.write(
                f"{found.kind} {found.name}: {found.declared} -- {found.state} {found.detail}"
            )
        self.stdout.write(f"bound topics: {', '.join(report.topics) or '(no handlers)'}")
        if report.stale_topics:
            self.stdout.write(
                "stale bindings (no handler declares them; --prune removes them): "
                + ", ".join(report.stale_topics)
            )
        if options["check"] and report.problems:
            raise CommandError(
                "topology differs from the broker:\n  " + "\n  ".join(report.problems)
            )
