"""The result every operator action returns (admin actions, management commands, retention)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OperationResult:
    """Rows an operation changed (or, in a dry run, would change), and rows it skipped.

    ``failed_again`` counts replayed rows whose handler failed once more (inbox replay);
    ``deferred`` the rows an action made due but left to the retry sweep, so as not to run an
    unbounded chain of handlers in one request.
    """

    done: int
    skipped: int
    failed_again: int = 0
    deferred: int = 0
