"""Where a consumer's handler thread spends its time, from ``bench/consume.py --profile``.

    .venv/bin/python bench/profile_summary.py FILE [--thread inbox-lane-0]

Reads py-spy's raw samples (one line per distinct stack, ``frame;frame;… count``, the first
frame naming the thread) and puts each sample of the thread in the first step of the path
from delivery to ack whose function is on its stack, split into time waiting for PostgreSQL
(psycopg's ``Connection.wait``) and the rest (Python).
"""

from __future__ import annotations

import argparse
import collections

#: Steps of the path, in the order a sample is matched (innermost first where they nest).
STEPS = (
    ("inbox rows of a batch, one insert", "_insert_all (inbox/processing.py"),
    ("inbox row insert", "_insert (inbox/processing.py"),
    ("handler (bench: one ORM insert)", "bench (bench/benchapp/handlers.py"),
    ("handler (bench: 10 ms sleep, one ORM insert)", "bench_io (bench/benchapp/handlers.py"),
    ("progress locks", "lock_all (inbox/ordering.py"),
    ("finding waiting streams", "with_waiting (inbox/ordering.py"),
    ("draining streams", "drain_stream (inbox/processing.py"),
    ("commit", "Atomic.__exit__"),
    ("parsing the envelope", "parse (inbox/envelope.py"),
    ("rest of the batch (rows, messages)", "process_batch (inbox/processing.py"),
    ("waiting for deliveries", "Lanes.take (inbox/lanes.py"),
    # The worker's event loop (--thread MainThread).
    ("acknowledging", "Message.ack (kombu"),
    ("reading deliveries", "Connection.drain_events (amqp"),
    ("idle in the event loop", "_epoll.poll"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file")
    parser.add_argument("--thread", default="inbox-lane-0")
    args = parser.parse_args()
    shares: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    with open(args.file) as samples:
        for line in samples:
            stack, _, count = line.rstrip().rpartition(" ")
            if args.thread not in stack.split(";", 1)[0]:
                continue
            step = next((name for name, frame in STEPS if frame in stack), "other")
            where = "database" if "Connection.wait (psycopg" in stack else "python"
            shares[step, where] += int(count)
            total += int(count)
    print(f"{total} samples of {args.thread}")
    for (step, where), count in shares.most_common():
        print(f"{100 * count / total:5.1f}%  {step:<36} {where}")


if __name__ == "__main__":
    main()
