"""The telemetry endpoint a relay or worker process serves on ``TELEMETRY_PORT``:
``/metrics`` (Prometheus text), ``/live`` and ``/ready`` (200 or 503, with JSON saying why).

A small threaded WSGI server on a daemon thread, started once per process; a web process
serves the same through :func:`inbox_outbox.views.metrics` and friends instead.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.db import connections

from . import health, metrics
from .conf import get_settings

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def respond(path: str) -> tuple[int, str, bytes]:
    """Status, content type and body for ``path`` (the WSGI app and the Django views)."""
    if path == "/metrics":
        if not metrics.PROMETHEUS:
            return 501, "text/plain", b"prometheus-client is not installed\n"
        body, content_type = metrics.prometheus_text()
        return 200, content_type, body
    if path in ("/live", "/ready"):
        state = health.health()
        good = state.live if path == "/live" else state.ready
        text = json.dumps(
            {
                "live": state.live,
                "ready": state.ready,
                "loops": state.loops,
                "conditions": state.conditions,
            }
        )
        return (200 if good else 503), "application/json", text.encode()
    return 404, "text/plain", b"not found: /metrics, /live or /ready\n"


_REASONS = {200: "OK", 404: "Not Found", 501: "Not Implemented", 503: "Service Unavailable"}


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    try:
        status, content_type, body = respond(environ.get("PATH_INFO", "/"))
    finally:
        # This server's threads are not Django's requests: close what the gauges opened.
        connections.close_all()
    start_response(
        f"{status} {_REASONS.get(status, '')}",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("telemetry endpoint: " + format, *args)


_server: _Server | None = None
_lock = threading.Lock()


def serve(port: int | None = None) -> int | None:
    """Serve the endpoint on ``port`` (default ``TELEMETRY_PORT``; none when unset), once per
    process; return the port it listens on."""
    global _server
    port = get_settings().telemetry_port if port is None else port
    if port is None:
        return None
    with _lock:
        if _server is None:
            server = make_server(
                "", port, application, server_class=_Server, handler_class=_QuietHandler
            )
            assert isinstance(server, _Server)
            _server = server
            threading.Thread(
                target=server.serve_forever, name="inbox-outbox-telemetry", daemon=True
            ).start()
            logger.info("inbox_outbox: telemetry on port %d (/metrics, /live, /ready)", port)
        return int(_server.server_address[1])
