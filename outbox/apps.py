from django.apps import AppConfig


class OutboxConfig(AppConfig):
    name = "outbox"
    label = "outbox"
    verbose_name = "Outbox"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from inbox_outbox import checks as shared_checks
        from inbox_outbox import metrics

        from . import checks, gauges

        shared_checks.register()
        checks.register()
        metrics.register_gauges("outbox", gauges.readings)

        from celery.signals import before_task_publish

        from .celery_tasks import warn_direct_send

        before_task_publish.connect(warn_direct_send, dispatch_uid="outbox.warn_direct_send")
