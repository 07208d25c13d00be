from django.apps import AppConfig


class HandlersAppConfig(AppConfig):
    name = "tests.standalone.handlers_app"
    label = "standalone_handlers"
    default_auto_field = "django.db.models.BigAutoField"
