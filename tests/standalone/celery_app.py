"""A Celery app module for the standalone projects, as a new user's ``project/celery.py``
would be (``celery -A tests.standalone.celery_app worker``)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.standalone.inbox_only")

app = Celery("standalone")
app.config_from_object("django.conf:settings", namespace="CELERY")
