from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "inbox_outbox_tasks"
    label = "inbox_outbox_tasks"
    verbose_name = "Tasks (through the outbox)"
    default_auto_field = "django.db.models.BigAutoField"
