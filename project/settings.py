"""Settings of the example service, read from the environment (django-environ).

With no environment at all it runs on SQLite and kombu's in-memory transport, so
``manage.py demo`` works on a bare machine; point ``DATABASE_URL`` and
``CELERY_BROKER_URL`` at PostgreSQL and RabbitMQ for the real thing.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False) if (BASE_DIR / ".env").exists() else None

SECRET_KEY = env("SECRET_KEY", default="django-insecure-dev-only-change-me")
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "outbox",
    "inbox",
    "project.shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))

# Celery: every CELERY_* setting here configures project/celery.py's app.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="memory://localhost/")
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# AMQP heartbeats (seconds): the broker drops a connection that misses two. Celery's default.
CELERY_BROKER_HEARTBEAT = env.int("CELERY_BROKER_HEARTBEAT", default=120)
CELERY_BEAT_SCHEDULE = {
    "outbox-relay": {"task": "outbox.relay", "schedule": env.float("RELAY_INTERVAL", default=2.0)},
    "inbox-retry": {
        "task": "inbox.retry_due",
        "schedule": env.float("INBOX_RETRY_INTERVAL", default=2.0),
    },
    "outbox-retention": {"task": "outbox.purge", "schedule": 3600.0},
    "inbox-retention": {"task": "inbox.purge", "schedule": 3600.0},
}

INBOX_OUTBOX = {
    "SERVICE": env("SERVICE_NAME", default="shop"),
    "EXCHANGE": env("EVENTS_EXCHANGE", default="events"),
    "RETENTION_DAYS": env.float("RETENTION_DAYS", default=None),
    "RELAY_POLL_INTERVAL": env.float("RELAY_POLL_INTERVAL", default=1.0),
    "NUDGE_INTERVAL": env.float("NUDGE_INTERVAL", default=0.005),
    "QUEUE_TYPE": env("QUEUE_TYPE", default="classic"),
    "DELIVERY_LIMIT": env.int("DELIVERY_LIMIT", default=20),
}

# Celery's own task queues replicated like the service queue: a classic queue lives on one
# node of a cluster, and a worker whose task queue's node is down stops ("Unrecoverable
# error: NOT_FOUND ... process is stopped by supervisor") while the inbox's queue is fine.
CELERY_TASK_DEFAULT_QUEUE_TYPE = CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = env(
    "CELERY_QUEUE_TYPE", default=INBOX_OUTBOX["QUEUE_TYPE"]
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="WARNING")},
}
