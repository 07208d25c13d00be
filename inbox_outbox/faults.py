"""Whose fault an error is: the database's (down, overloaded, misconfigured: wait and try the
same work again) or the message's (its content cannot be stored or read: keep it marked as
bad, never try it again). Decided here once, for every place that must tell them apart.
"""

from __future__ import annotations

from django.db import DatabaseError, DataError, IntegrityError, InterfaceError


def blames_content(exc: BaseException) -> bool:
    """Whether ``exc``, raised while storing or reading one message, is that message's fault.

    Only two kinds of database error are: a data exception (SQLSTATE class 22: a value out of
    range, text the column cannot hold) and an integrity violation (class 23). Every other
    database error (a lost connection, a shutdown, a timeout, a deadlock, a missing table or
    permission) says nothing about the message; blaming it would mark every message bad while
    the database is unwell. Any other exception (an error of the code reading the message,
    such as a ``RecursionError``) arose from this message's content.
    """
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DatabaseError | InterfaceError):
        return False
    return isinstance(exc, Exception)
