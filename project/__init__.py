"""The example service: a Django project wired with the outbox, the inbox and Celery."""

from .celery import app as celery_app

__all__ = ["celery_app"]
