"""Liveness and readiness of the long-running loops (the relay, the worker's inbox sweep),
the way Kubernetes probes read them.

Each loop reports a *beat* per turn: healthy when its turn reached the database and the
broker, unhealthy with the error when it could not. A dependency that no loop of ours turns
over (the worker's broker connection, which Celery keeps and reconnects) is reported as a
standing *condition* instead, set when it changes. A process is **live** while every loop
that ever beat has beaten within ``HEALTH_STALE_AFTER`` seconds (a loop stuck in a call stops
beating), and **ready** while it is live, every loop's last beat was healthy and every
condition holds. Both are served at ``/live`` and ``/ready`` on ``TELEMETRY_PORT``
(:mod:`inbox_outbox.endpoint`), and ``HEALTH_FILE``, when set, is touched at every healthy
beat of a ready process, for an exec probe that checks its age.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

from .conf import get_settings


@dataclass(frozen=True, slots=True)
class Beat:
    """A loop's last report: when (monotonic seconds), whether healthy, and why not."""

    at: float
    ok: bool
    error: str = ""


_beats: dict[str, Beat] = {}
#: Standing conditions: when each last changed, whether it holds, and why not.
_conditions: dict[str, Beat] = {}
_lock = threading.Lock()


def beat(loop: str, *, ok: bool = True, error: str = "") -> None:
    """Report one turn of ``loop``: healthy, or not with ``error``."""
    with _lock:
        _beats[loop] = Beat(time.monotonic(), ok, error[:500])
    path = get_settings().health_file
    if ok and path and health().ready:
        try:
            with open(path, "a"):
                os.utime(path)
        except OSError:  # an unwritable probe file must not stop the loop
            pass


def condition(name: str, *, ok: bool, error: str = "") -> None:
    """Set the standing condition ``name``: it holds, or not with ``error``. Unlike a beat it
    does not age: it stays as set until set again."""
    with _lock:
        current = _conditions.get(name)
        if current is None or (current.ok, current.error) != (ok, error[:500]):
            _conditions[name] = Beat(time.monotonic(), ok, error[:500])


@dataclass(frozen=True, slots=True)
class Health:
    live: bool
    ready: bool
    #: Per loop: seconds since its last beat, and its error when unhealthy.
    loops: dict[str, dict[str, object]]
    #: Per condition: seconds since it last changed, whether it holds, and why not.
    conditions: dict[str, dict[str, object]]


def health() -> Health:
    """This process's liveness and readiness, from its loops' last beats."""
    stale_after = get_settings().health_stale_after
    now = time.monotonic()
    with _lock:
        beats, conditions = dict(_beats), dict(_conditions)
    loops = {
        name: {"age_seconds": round(now - b.at, 3), "ok": b.ok, "error": b.error}
        for name, b in beats.items()
    }
    standing = {
        name: {"since_seconds": round(now - c.at, 3), "ok": c.ok, "error": c.error}
        for name, c in conditions.items()
    }
    live = all(now - b.at <= stale_after for b in beats.values())
    ready = live and all(b.ok for b in beats.values()) and all(c.ok for c in conditions.values())
    return Health(live=live, ready=ready, loops=loops, conditions=standing)


def file_age_seconds() -> float | None:
    """Seconds since ``HEALTH_FILE`` was last touched (infinite when it does not exist); None
    when no file is set. Read by ``--check --max-health-age`` in another process."""
    path = get_settings().health_file
    if not path:
        return None
    try:
        return max(0.0, time.time() - os.stat(path).st_mtime)
    except FileNotFoundError:
        return math.inf


def reset() -> None:
    """Forget every loop and condition (tests)."""
    with _lock:
        _beats.clear()
        _conditions.clear()
