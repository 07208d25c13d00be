"""The test settings plus the benchmark's handler app."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]

# bench/consume.py --tracing: the workers record every span with the SDK, into memory.
import os  # noqa: E402

if os.environ.get("BENCH_TRACING"):
    from tests.spans import in_memory

    in_memory()
