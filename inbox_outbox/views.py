"""Django views of the telemetry endpoint, for the web process: route them in your urls.py,
e.g. ``path("metrics", inbox_outbox.views.metrics)``."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from .endpoint import respond


def _view(path: str, request: HttpRequest) -> HttpResponse:
    status, content_type, body = respond(path)
    return HttpResponse(body, status=status, content_type=content_type)


def metrics(request: HttpRequest) -> HttpResponse:
    """This process's metrics and the database's gauges, in Prometheus text."""
    return _view("/metrics", request)


def live(request: HttpRequest) -> HttpResponse:
    return _view("/live", request)


def ready(request: HttpRequest) -> HttpResponse:
    return _view("/ready", request)
