"""Settings shared by the standalone projects, read from ``STANDALONE_*`` variables.

``STANDALONE_DATABASES`` is Django's ``DATABASES`` as JSON (default: in-memory SQLite);
``STANDALONE_BROKER_URL`` becomes ``CELERY_BROKER_URL`` when set (nothing else names a
broker: there is no Celery app module); ``STANDALONE_USE_TZ=0`` turns time zones off;
``STANDALONE_INBOX_OUTBOX`` adds keys to ``INBOX_OUTBOX`` (JSON).
"""

import json
import os

SECRET_KEY = "standalone-install-test"
DEBUG = False
USE_TZ = os.environ.get("STANDALONE_USE_TZ", "1") == "1"
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = json.loads(
    os.environ.get(
        "STANDALONE_DATABASES",
        '{"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}',
    )
)
if os.environ.get("STANDALONE_BROKER_URL"):
    CELERY_BROKER_URL = os.environ["STANDALONE_BROKER_URL"]

INBOX_OUTBOX = {
    "SERVICE": os.environ.get("STANDALONE_SERVICE", "standalone"),
    "EXCHANGE": os.environ.get("STANDALONE_EXCHANGE", "standalone.events"),
    # More keys, as a JSON object (to try broken values).
    **json.loads(os.environ.get("STANDALONE_INBOX_OUTBOX", "{}")),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
