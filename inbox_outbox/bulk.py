"""Bulk deletes that stay cheap at millions of rows. No models: the inbox uses it too."""

from __future__ import annotations

from django.db import router, transaction
from django.db.models import Model, QuerySet


def delete_in_batches(matching: QuerySet[Model], batch_size: int) -> int:
    """Delete the rows of ``matching`` by primary key, ``batch_size`` per transaction.

    Each batch is its own short transaction: no long lock, and memory stays flat
    however many rows match. The delete applies ``matching``'s conditions again, so a row
    that changed between the select and the delete (replayed, used again) is kept. Returns
    how many rows were deleted.
    """
    model = matching.model
    alias = router.db_for_write(model)
    pk = model._meta.pk.attname
    deleted = 0
    while True:
        with transaction.atomic(using=alias):
            ids = list(matching.using(alias).order_by().values_list(pk, flat=True)[:batch_size])
            if not ids:
                return deleted
            deleted += matching.using(alias).filter(pk__in=ids).delete()[0]
