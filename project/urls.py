from django.contrib import admin
from django.urls import path

from inbox_outbox import views as telemetry

urlpatterns = [
    path("admin/", admin.site.urls),
    # The web process's own metrics (publish()) and the database's gauges, for Prometheus.
    path("metrics", telemetry.metrics),
]
