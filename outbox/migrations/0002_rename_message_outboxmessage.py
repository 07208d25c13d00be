from django.db import migrations


class Migration(migrations.Migration):
    """The model is now ``OutboxMessage`` (``inbox.Message`` is what a handler receives).

    The table keeps its name (``db_table``), so this changes no data; Django renames the
    content type, and the replay and purge permissions keep their codenames.
    """

    dependencies = [("outbox", "0001_initial")]

    operations = [migrations.RenameModel("Message", "OutboxMessage")]
