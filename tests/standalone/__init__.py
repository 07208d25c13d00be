"""Minimal projects that install the outbox, the inbox, or both, for the install tests.

Each settings module is a whole project with nothing but the apps it names: no
``django.contrib`` apps, no Celery app module. The tests run them in fresh interpreters
(``DJANGO_SETTINGS_MODULE=tests.standalone.<name>``) and configure them by environment.
"""
