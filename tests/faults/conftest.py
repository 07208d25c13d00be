"""Settings the test process shares with the processes under test (retries run here too)."""

import pytest

from tests.faults.harness import FAST


@pytest.fixture(autouse=True)
def fast_faults(settings, names):
    overrides = {k.removeprefix("INBOX_OUTBOX_"): float(v) for k, v in FAST.items()}
    for name in ("RELAY_BATCH_SIZE", "INBOX_MAX_ATTEMPTS"):
        overrides[name] = int(overrides[name])
    settings.INBOX_OUTBOX = {**settings.INBOX_OUTBOX, **overrides}
