from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class InboxConfig(AppConfig):
    name = "inbox"
    label = "inbox"
    verbose_name = "Inbox"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import celeryd_init

        from inbox_outbox import checks as shared_checks
        from inbox_outbox import metrics

        from . import checks, gauges
        from .worker import install

        shared_checks.register()
        checks.register()
        metrics.register_gauges("inbox", gauges.readings)
        # Like admin.py: every installed app's handlers.py registers its @handler functions.
        autodiscover_modules("handlers")
        celeryd_init.connect(install, weak=False, dispatch_uid="inbox.install_consumer")
