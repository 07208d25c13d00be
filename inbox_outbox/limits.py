"""What a message may hold: the limits of the database columns, of strict JSON and of AMQP.

Both sides check here, with the same rules: ``publish()`` refuses a value before it becomes an
outbox row, and the inbox's envelope parser refuses a delivery before it becomes an inbox row.
So a message one side accepts is one the other can store and carry, and a value that breaks
a rule is named as the message's fault where it enters, never discovered later as a database
or broker error that looks like an outage.

Each check raises :class:`LimitError`, whose text completes a sentence that begins with what
was checked (``"the payload ..."``), e.g. ``"contains NUL (U+0000), which PostgreSQL cannot
store"``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from typing import Any

#: Characters of the text columns both apps share: topic, ordering key, source, dedup key.
TEXT_CHARS = 255
#: Characters of a message id in the inbox, where it is the dedup key (never truncated).
ID_CHARS = 200
#: AMQP short strings (routing key, ``type`` and ``message_id`` properties, header names):
#: at most this many bytes of UTF-8.
SHORTSTR_BYTES = 255
#: PostgreSQL ``bigint``: sequences and epochs.
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
#: AMQP 0-9-1 table integers (``l``): signed 64 bits.
AMQP_INT_MIN, AMQP_INT_MAX = -(2**63), 2**63 - 1
#: Nesting of arrays and objects in a payload or in headers. Deep enough for any document a
#: service sends on purpose (GeoJSON needs 5), shallow enough that every JSON library, the
#: database and the consumer's decoder read it without running out of stack (Python's own
#: decoder stops near 1,000, RabbitMQ's table decoder earlier for headers).
JSON_DEPTH = 100
#: Per-message TTL: RabbitMQ refuses an ``expiration`` over ten years (315,360,000,000 ms)
#: with a channel error, which would stop a relay's whole batch.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600

#: CloudEvents forbids control characters in its String type; ids obey it, so a storage key
#: holding one (see :func:`storage_key`) can never equal an id.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: A JSON string literal (the unrolled form: linear, no backtracking).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
#: ``\u0000`` in JSON text, unless its backslash is itself escaped (``\\u0000`` is the text
#: "\u0000", which is fine).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

#: Strict JSON: no NaN or infinities (not JSON, and refused by PostgreSQL's jsonb).
STRICT_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class LimitError(ValueError):
    """Raised when a value is outside what the database, strict JSON or AMQP can carry."""


def _encodable(value: str) -> bool:
    """Whether ``value`` is valid Unicode (no lone surrogates), i.e. has a UTF-8 form."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: object, *, max_chars: int = TEXT_CHARS, max_bytes: int | None = None) -> str:
    """A non-empty string that a text column (and, with ``max_bytes``, an AMQP short string)
    holds as it is: no NUL, no lone surrogate, not over the limits."""
    if not isinstance(value, str):
        raise LimitError(f"must be a string, got {type(value).__name__}")
    if not value:
        raise LimitError("is empty")
    if len(value) > max_chars:
        raise LimitError(f"has {len(value)} characters, over the limit of {max_chars}")
    if "\x00" in value:
        raise LimitError("contains NUL (U+0000), which PostgreSQL cannot store")
    if not _encodable(value):
        raise LimitError("contains a lone surrogate, which is not Unicode text")
    if max_bytes is not None and len(value) * 4 > max_bytes:
        size = len(value.encode())
        if size > max_bytes:
            raise LimitError(f"is {size} bytes of UTF-8, over AMQP's limit of {max_bytes}")
    return value


def check_id(value: object) -> str:
    """A message id as the inbox keys it: a CloudEvents string (no control characters) of at
    most :data:`ID_CHARS` characters, stored whole."""
    text = check_text(value, max_chars=ID_CHARS)
    control = _CONTROL.search(text)
    if control is not None:
        raise LimitError(
            f"contains the control character U+{ord(control.group()):04X}, which CloudEvents "
            "forbids in a string"
        )
    return text


def check_bigint(value: int) -> int:
    if not BIGINT_MIN <= value <= BIGINT_MAX:
        raise LimitError("is outside the 64-bit range of the database")
    return value


def json_text(value: Any, *, encoder: json.JSONEncoder = STRICT_ENCODER) -> str:
    """``value`` as strict JSON text that PostgreSQL's jsonb stores and every JSON reader
    decodes: no NaN or infinity, no NUL, valid Unicode, at most :data:`JSON_DEPTH` deep."""
    try:
        text = encoder.encode(value)
    except RecursionError:
        raise LimitError(f"is nested deeper than {JSON_DEPTH} levels") from None
    except (TypeError, ValueError) as exc:  # NaN/infinity, an unknown type, too many digits
        if "Out of range float" in str(exc):
            raise LimitError(
                "holds NaN or an infinite number, which JSON cannot represent"
            ) from exc
        raise LimitError(f"is not strict JSON ({exc})") from exc
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise LimitError("contains NUL (U+0000), which PostgreSQL cannot store")
    if not _encodable(text):
        raise LimitError("contains a lone surrogate, which is not Unicode text")
    if text.count("[") + text.count("{") > JSON_DEPTH:  # else it cannot be deeper
        depth = json_depth(text)
        if depth > JSON_DEPTH:
            raise LimitError(f"is nested {depth} levels deep, over the limit of {JSON_DEPTH}")
    return text


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON ``text``: its string literals and all
    but brackets go first (regular expressions, in C), then a running sum finds the deepest."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def _no_constant(name: str) -> Any:
    raise LimitError(f"holds {name}, which is not a JSON number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise LimitError(f"holds the number {literal[:40]}, beyond the range of a double")
    return value


def json_value(raw: bytes) -> Any:
    """Decode strict JSON (what :func:`json_text` writes); :class:`LimitError` if it is not."""
    try:
        text = raw.decode()  # JSON between systems is UTF-8 (RFC 8259), never guessed
    except UnicodeDecodeError as exc:
        raise LimitError(f"is not UTF-8 text, so not JSON ({exc})") from exc
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except LimitError:
        raise
    except RecursionError:
        raise LimitError(f"is nested deeper than {JSON_DEPTH} levels") from None
    except ValueError as exc:  # malformed, or an integer of more digits than Python converts
        raise LimitError(f"is not JSON ({exc})") from exc


def check_amqp_table(table: dict[str, Any]) -> None:
    """Refuse what an AMQP field table cannot carry, at any depth: a field name that is not a
    string or is over :data:`SHORTSTR_BYTES` bytes, an integer beyond 64 bits."""
    stack: list[tuple[Any, int]] = [(table, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > JSON_DEPTH:
            raise LimitError(f"is nested deeper than {JSON_DEPTH} levels")
        if isinstance(value, dict):
            for name, item in value.items():
                if not isinstance(name, str):
                    raise LimitError(f"has a field name {name!r} that is not a string")
                try:
                    check_text(name, max_bytes=SHORTSTR_BYTES)
                except LimitError as exc:
                    raise LimitError(f"has a field name {printable(name, 60)} that {exc}") from None
                stack.append((item, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((item, depth + 1) for item in value)
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not AMQP_INT_MIN <= value <= AMQP_INT_MAX
        ):
            raise LimitError(f"holds the integer {printable(value, 60)}, beyond AMQP's 64 bits")


def printable(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters: safe to store and to show (it escapes NUL,
    control characters and lone surrogates)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def storable_text(value: str) -> str:
    """``value`` with what no text column holds (NUL, lone surrogates) escaped."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    if not _encodable(value):
        value = value.encode("utf-8", "backslashreplace").decode()
    return value


def storage_key(raw_id: object, body: bytes) -> str:
    """The inbox key of a rejected delivery whose own id is missing or unusable: derived from
    the id and the body, so a redelivery of it is stored once, and holding a control
    character, so no real id (see :func:`check_id`) can ever equal it."""
    digest = hashlib.sha256()
    digest.update(repr(raw_id).encode("utf-8", "backslashreplace"))
    digest.update(b"\n")
    digest.update(body)
    return f"rejected\tsha256:{digest.hexdigest()}"
