"""django-inbox-outbox: the transactional outbox.

Call :func:`publish` inside the transaction that makes the business change; the
relay (``manage.py outbox_relay`` or the ``outbox.relay`` Celery task) puts the
message on the broker once that transaction has committed.
"""

import warnings
from typing import TYPE_CHECKING, Any

from .exceptions import (
    BrokerUnavailable,
    NotInTransaction,
    OutboxConfigurationError,
    OutboxError,
    PayloadTooLarge,
    PublishError,
    ReplayRefused,
    StatementLost,
)

__all__ = [
    "BrokerUnavailable",
    "NotInTransaction",
    "OutboxConfigurationError",
    "OutboxError",
    "OutboxMessage",
    "OutboxTask",
    "PayloadTooLarge",
    "PublishError",
    "Relay",
    "ReplayRefused",
    "StatementLost",
    "publish",
    "send_task",
]

if TYPE_CHECKING:
    from .celery_tasks import OutboxTask, send_task
    from .models import OutboxMessage
    from .publishing import publish
    from .relay import Relay


def __getattr__(name: str) -> Any:
    # Models can only be imported once the app registry is ready; import lazily.
    if name == "publish":
        from .publishing import publish

        return publish
    if name in ("OutboxMessage", "Message"):
        from .models import OutboxMessage

        if name == "Message":
            warnings.warn(
                "outbox.Message is now outbox.OutboxMessage (inbox.Message is what a handler "
                "receives); the old name goes in 0.3.",
                DeprecationWarning,
                stacklevel=2,
            )
        return OutboxMessage
    if name == "Relay":
        from .relay import Relay

        return Relay
    if name in ("OutboxTask", "send_task"):
        from . import celery_tasks

        return getattr(celery_tasks, name)
    raise AttributeError(f"module 'outbox' has no attribute {name!r}")
