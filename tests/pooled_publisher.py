"""A publishing process driven line by line, for the tests behind a connection pooler.

``python tests/pooled_publisher.py``: reads one JSON object per line from stdin
(``publish()``'s keyword arguments plus ``topic`` and ``payload``), publishes it in a
transaction of its own, and answers one JSON line: ``{"id": ...}`` or ``{"error": <class
name>, "message": ...}``. Each process keeps its own statement history, as a web worker does.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from django.db import transaction  # noqa: E402

from outbox import publish  # noqa: E402

for line in sys.stdin:
    request = json.loads(line)
    try:
        with transaction.atomic():
            message = publish(request.pop("topic"), request.pop("payload"), **request)
        answer = {"id": str(message.id)}
    except Exception as exc:
        answer = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(answer), flush=True)
