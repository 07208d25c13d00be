"""The shared kernel of django-inbox-outbox: what both apps need and that knows neither
app's models.

Internal: applications import :mod:`outbox` and :mod:`inbox`. Each app depends on this
package and never on the other app, so either may be installed alone.

- :mod:`.conf` the ``INBOX_OUTBOX`` settings, validated; the broker URL
- :mod:`.checks` the system checks both apps register
- :mod:`.cloudevents` the wire format (CloudEvents 1.0 over AMQP) as the producer writes it
- :mod:`.broker` broker connections and the shared exchange
- :mod:`.backoff` the retry delay rule
- :mod:`.adminkit`, :mod:`.commandkit`, :mod:`.operations`, :mod:`.bulk` what the two apps'
  admins, commands and operator actions share
- :mod:`.lookups` the ``__any`` lookup (``= ANY(array)`` on PostgreSQL)
- :mod:`.tracing` every OpenTelemetry call: the hooks that make the spans and record the
  flow's metrics; :mod:`.metrics`, :mod:`.health`, :mod:`.endpoint` the metrics' exporters,
  the loops' liveness and readiness, the ``TELEMETRY_PORT`` server; :mod:`.logfields` the
  structured fields of log lines about a message

One module is for applications to use: :mod:`.views` (``metrics``, ``live``, ``ready``), the
telemetry endpoint as Django views for a web process's ``urls.py``.
"""
