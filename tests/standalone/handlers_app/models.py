from django.db import models


class Greeting(models.Model):
    """The handler's effect: one row per handled message, in the handler's transaction."""

    message_id = models.CharField(max_length=200, unique=True)
    name = models.CharField(max_length=100)

    class Meta:
        db_table = "standalone_greeting"
