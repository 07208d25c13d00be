"""AMQP short strings that are not UTF-8 must not kill the worker.

py-amqp decodes a delivery's property strings (``message_id``, ``type``, ``app_id``…) as strict
UTF-8 while it reads the frame, before any consumer code runs: one message whose
``message_id`` holds other bytes raises ``UnicodeDecodeError`` in the worker's connection and
the worker exits; the message is delivered to the next worker, which exits too. Decoded with
``surrogateescape`` instead, such bytes arrive as lone surrogates, which the envelope parser
refuses like any other text that is not Unicode: the delivery is stored ``rejected`` and
acknowledged. Valid UTF-8 decodes exactly as before.
"""

from __future__ import annotations

import amqp.serialization


def _short_string(value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return value.decode("utf-8", "surrogateescape")


def decode_leniently() -> None:
    """Make py-amqp decode short strings that are not UTF-8 instead of raising (idempotent;
    for the whole process, which only changes what used to be an error)."""
    setattr(amqp.serialization, "pstr_t", _short_string)  # noqa: B010 (untyped module global)
