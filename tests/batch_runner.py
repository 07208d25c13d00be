"""Hand batches of keyed deliveries to ``process_batch`` in a process of its own.

``python tests/batch_runner.py ROUNDS KEYS ORDER``: for each round, one batch with one message
per key (ids ``r<round>-<key>``, sequence ``round + 1``), the keys in ``asc`` or ``desc`` order.
Two runners with opposite orders deliver the same messages at the same time, as two workers
holding redeliveries of one another's batches would.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from inbox.processing import process_batch  # noqa: E402
from inbox_outbox.cloudevents import CONTENT_TYPE  # noqa: E402
from tests.conftest import cloudevent  # noqa: E402

rounds, keys, order = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
names = [f"k{n:02d}" for n in range(keys)]
if order == "desc":
    names.reverse()
for r in range(rounds):
    batch = [
        (
            json.dumps(
                cloudevent("test.effect", {"sleep": 0.001}, id=f"r{r}-{k}", key=k, sequence=r + 1)
            ).encode(),
            {"content_type": CONTENT_TYPE},
            {},
        )
        for k in names
    ]
    process_batch(batch)
print("done", flush=True)
