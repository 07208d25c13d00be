"""Exponential backoff with full jitter: the relay's publish retries, the inbox's handler
retries, and the reconnect loops all wait by this one rule."""

from __future__ import annotations

from celery.utils.time import get_exponential_backoff_interval


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: full jitter over ``base·2ⁿ``, at
    most ``cap``. Celery's helper works in whole units, so it is given milliseconds."""
    millis = get_exponential_backoff_interval(
        factor=max(1, int(base * 1000)),
        retries=max(attempts - 1, 0),
        maximum=max(1, int(cap * 1000)),
        full_jitter=True,
    )
    return float(max(millis, 1)) / 1000
