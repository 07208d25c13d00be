"""The library's settings: one ``INBOX_OUTBOX`` dict, read at call time, validated once.

Both apps read the same dict so that the service name, broker and exchange are configured
once. Values are resolved lazily and cached until Django's ``setting_changed`` signal fires,
so ``override_settings`` works in tests.

Every key has one rule (:data:`RULES`). The system checks report each broken rule with its
fix (:func:`problems`); code that reads the settings at run time gets a
:class:`~inbox_outbox.exceptions.ConfigurationError` instead of a wrong value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .exceptions import ConfigurationError

SETTING_NAME = "INBOX_OUTBOX"

UNROUTABLE_POLICIES = ("retry", "dead", "ignore")
UNKNOWN_TOPIC_POLICIES = ("reject", "ignore")
QUEUE_TYPES = ("classic", "quorum")
#: Suffixes of the dead-letter exchange and queue a quorum service queue is declared with.
DEAD_LETTER_SUFFIX = ".dead-letter"

#: ``<SERVICE>:<handler name>`` must fit the inbox's 200-character consumer column, and the
#: service is also a queue name and the CloudEvents ``source``.
SERVICE_MAX_LENGTH = 100
SERVICE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: AMQP short strings (exchange and queue names, routing keys) are at most 255 bytes.
AMQP_NAME_MAX_BYTES = 255
#: Upper bounds that keep every value inside a PostgreSQL ``integer`` / ``interval`` and a
#: Python ``timedelta`` added to now (larger values are typos, e.g. milliseconds for seconds).
MAX_INTEGER = 2**31 - 1
MAX_SECONDS = 10 * 366 * 86400
MAX_DAYS = 100 * 366


@dataclasses.dataclass(frozen=True)
class Settings:
    """Typed view of ``settings.INBOX_OUTBOX``; field names are the dict keys, lower-cased."""

    # Shared by both apps.
    service: str = ""
    broker_url: str | list[str] | tuple[str, ...] | None = None
    exchange: str = "events"

    # Outbox: publishing.
    require_atomic: bool = False
    max_payload_bytes: int = 256 * 1024
    nudge: bool = True
    nudge_interval: float = 0.005
    prepare_statements: bool | None = None
    defer_inserts: bool = True

    # Outbox: relay.
    relay_batch_size: int = 500
    relay_confirm_timeout: float = 30.0
    relay_lease_seconds: float = 5.0
    relay_poll_interval: float = 1.0
    relay_max_attempts: int = 12
    relay_backoff_base: float = 2.0
    relay_backoff_max: float = 3600.0
    unroutable: str = "retry"
    relay_listen_dsn: str | None = None

    # Inbox: consuming.
    queue_prefix: str = ""
    queue_type: str = "classic"
    delivery_limit: int = 20
    inbox_hold_seconds: float = 900.0
    consume_in_worker: bool = True
    prefetch_count: int = 100
    inbox_concurrency: int = 1
    inbox_batch_size: int = 50
    inbox_batch_delay: float = 0.0
    max_body_bytes: int = 1024 * 1024
    unknown_topic: str = "reject"
    inbox_max_attempts: int = 8
    inbox_backoff_base: float = 2.0
    inbox_backoff_max: float = 3600.0
    order_wait_seconds: float = 300.0
    inbox_sweep_interval: float = 2.0
    dedup_window_days: float = 30.0

    # Retention (both apps): None disables the periodic purge.
    retention_days: float | None = None

    # Telemetry (both apps): the relay's and the worker's endpoint, the probe file.
    telemetry_port: int | None = None
    health_file: str | None = None
    health_stale_after: float = 60.0

    @property
    def inbox_lane_batch(self) -> int:
        """The most deliveries one lane takes at once: ``INBOX_BATCH_SIZE``, but no more than
        the lanes' share of ``PREFETCH_COUNT``, so that every lane gets work from what the
        broker lets the worker hold (at 100 prefetched and 8 lanes of 50, two lanes took it
        all and six sat idle)."""
        return max(1, min(self.inbox_batch_size, self.prefetch_count // self.inbox_concurrency))

    @property
    def queue_name(self) -> str:
        """The service's queue: every worker of one service shares it (a consumer group)."""
        return f"{self.queue_prefix}{self.service}"

    @property
    def dead_letter_name(self) -> str:
        """The service queue's dead-letter exchange and queue (quorum queues): one name, two
        kinds of object (AMQP keeps exchange and queue names apart)."""
        return f"{self.queue_name}{DEAD_LETTER_SUFFIX}"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One broken rule: which key, what is wrong, how to fix it, and the check's id."""

    key: str
    message: str
    hint: str
    id: str


#: A rule returns what is wrong with a value (``None`` when it is fine) and the check id.
Rule = tuple[Callable[[Any], str | None], str]


def _show(value: Any) -> str:
    """``repr(value)`` cut to a readable length (a check message, not a dump)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # int beyond float range is not finite for our purposes (and math.isfinite would raise).
    return isinstance(value, int) or math.isfinite(value)


def _positive_int(limit: int = MAX_INTEGER) -> Callable[[Any], str | None]:
    def rule(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"must be a positive integer (not a string or bool), got {_show(value)}"
        if value > limit:
            return f"must be at most {limit}, got {_show(value)}"
        return None

    return rule


def _number(*, zero: bool = False, unit: str = "seconds") -> Callable[[Any], str | None]:
    limit = MAX_DAYS if unit == "days" else MAX_SECONDS

    def rule(value: Any) -> str | None:
        if not _is_number(value) or value < 0 or (value == 0 and not zero):
            wanted = "a number ≥ 0" if zero else "a positive number"
            return f"must be {wanted} of {unit} (int or float, not a string), got {_show(value)}"
        if value > limit:
            return f"must be at most {limit} {unit}, got {_show(value)}"
        return None

    return rule


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be True or False, got {_show(value)}"


def _optional_boolean(value: Any) -> str | None:
    return (
        None
        if value is None or isinstance(value, bool)
        else f"must be None, True or False, got {_show(value)}"
    )


def _choice(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def rule(value: Any) -> str | None:
        if isinstance(value, str) and value in options:
            return None
        return f"is {_show(value)}; use one of {', '.join(options)}"

    return rule


def _service(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string naming this service, got {_show(value)}"
    if len(value) > SERVICE_MAX_LENGTH or not SERVICE_PATTERN.fullmatch(value):
        return (
            f"must be at most {SERVICE_MAX_LENGTH} letters, digits and . _ - (starting with a "
            f"letter or digit), got {_show(value)}"
        )
    return None


def _utf8_length(value: str) -> int | None:
    try:
        return len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate cannot go on the wire
        return None


def _amqp_name(*, empty: bool) -> Callable[[Any], str | None]:
    def rule(value: Any) -> str | None:
        if not isinstance(value, str) or (not value and not empty):
            return f"must be a {'' if empty else 'non-empty '}string, got {_show(value)}"
        size = _utf8_length(value)
        if size is None or size > AMQP_NAME_MAX_BYTES or "\x00" in value:
            return f"must be at most {AMQP_NAME_MAX_BYTES} bytes of UTF-8 without NUL"
        return None

    return rule


def split_broker_urls(value: Any) -> tuple[tuple[str, ...], str | None]:
    """The broker URLs in ``value`` (one URL, kombu's failover form ``"amqp://a;amqp://b"``,
    or a list of either) and what is wrong with them (``None`` when nothing is).

    Each must name its transport (``amqp://``), all the same one: a relay that failed over
    from RabbitMQ to another kind of broker would publish where no consumer listens.
    """
    if isinstance(value, str):
        parts = value.split(";")
    elif isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        parts = [part for v in value for part in v.split(";")]
    else:
        return (), f"must be a broker URL string or a list of them, got {_show(value)}"
    urls = tuple(part.strip() for part in parts)
    for url in urls:
        if not url or "\x00" in url or _utf8_length(url) is None or "://" not in url:
            return urls, (
                f"must be broker URLs with a scheme (amqp://host:5672//), separated by ';' or "
                f"given as a list; {_show(url)} is not one"
            )
    schemes = sorted({url.split("://", 1)[0].lower() for url in urls})
    if len(schemes) > 1:
        return urls, f"mixes transports ({', '.join(schemes)}): list the nodes of one broker"
    return urls, None


def _broker_url(value: Any) -> str | None:
    if value is None:
        return None
    wrong = split_broker_urls(value)[1]
    return wrong and f"{wrong} (or None to use CELERY_BROKER_URL)"


def _listen_dsn(value: Any) -> str | None:
    if value is None:
        return None
    wrong = (
        f'must be None or a libpq connection string or URL (e.g. "host=db port=5432"), '
        f"got {_show(value)}"
    )
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        return wrong
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # no psycopg 3: the relay cannot listen anyway
        return None
    try:
        conninfo_to_dict(value)
    except Exception as exc:
        return f"{wrong}: {exc}".strip()
    return None


def _retention(value: Any) -> str | None:
    if value is None:
        return None
    wrong = _number(unit="days")(value)
    return wrong and f"must be None or a positive number of days, got {_show(value)}"


def _optional_port(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65_535:
        return f"must be None or a TCP port (0-65535; 0 picks a free one), got {_show(value)}"
    return None


def _optional_path(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value and "\0" not in value):
        return None
    return f"must be None or a file path, got {_show(value)}"


_INTEGER, _NUMBER, _BOOLEAN = "inbox_outbox.E004", "inbox_outbox.E008", "inbox_outbox.E009"

RULES: dict[str, Rule] = {
    "service": (_service, "inbox_outbox.E003"),
    "broker_url": (_broker_url, "inbox_outbox.E012"),
    "exchange": (_amqp_name(empty=False), "inbox_outbox.E014"),
    "require_atomic": (_boolean, _BOOLEAN),
    "max_payload_bytes": (_positive_int(), _INTEGER),
    "nudge": (_boolean, _BOOLEAN),
    "nudge_interval": (_number(zero=True), _NUMBER),
    "prepare_statements": (_optional_boolean, "inbox_outbox.E006"),
    "defer_inserts": (_boolean, "inbox_outbox.E007"),
    "relay_batch_size": (_positive_int(10_000), _INTEGER),
    "relay_confirm_timeout": (_number(), _NUMBER),
    "relay_lease_seconds": (_number(), _NUMBER),
    "relay_poll_interval": (_number(), _NUMBER),
    "relay_max_attempts": (_positive_int(), _INTEGER),
    "relay_backoff_base": (_number(), _NUMBER),
    "relay_backoff_max": (_number(), _NUMBER),
    "unroutable": (_choice(UNROUTABLE_POLICIES), "inbox_outbox.E001"),
    "relay_listen_dsn": (_listen_dsn, "inbox_outbox.E016"),
    "queue_prefix": (_amqp_name(empty=True), "inbox_outbox.E014"),
    "queue_type": (_choice(QUEUE_TYPES), "inbox_outbox.E017"),
    # RabbitMQ keeps a quorum queue's delivery limit in a 32-bit field.
    "delivery_limit": (_positive_int(), _INTEGER),
    "inbox_hold_seconds": (_number(zero=True), _NUMBER),
    "consume_in_worker": (_boolean, _BOOLEAN),
    # AMQP's prefetch count is a 16-bit field.
    "prefetch_count": (_positive_int(65_535), _INTEGER),
    "inbox_concurrency": (_positive_int(64), _INTEGER),
    "inbox_batch_size": (_positive_int(10_000), _INTEGER),
    "inbox_batch_delay": (_number(zero=True), _NUMBER),
    "max_body_bytes": (_positive_int(), _INTEGER),
    "unknown_topic": (_choice(UNKNOWN_TOPIC_POLICIES), "inbox_outbox.E002"),
    "inbox_max_attempts": (_positive_int(), _INTEGER),
    "inbox_backoff_base": (_number(), _NUMBER),
    "inbox_backoff_max": (_number(), _NUMBER),
    "order_wait_seconds": (_number(zero=True), _NUMBER),
    "inbox_sweep_interval": (_number(zero=True), _NUMBER),
    "dedup_window_days": (_number(zero=True, unit="days"), _NUMBER),
    "retention_days": (_retention, _NUMBER),
    "telemetry_port": (_optional_port, _INTEGER),
    "health_file": (_optional_path, "inbox_outbox.E018"),
    "health_stale_after": (_number(), _NUMBER),
}

_HINTS = {
    "service": 'Name the service, e.g. INBOX_OUTBOX = {"SERVICE": "billing"}: it becomes the '
    "CloudEvents source, the queue name and the prefix of every consumer. Two services left "
    "on one name would share a queue and each other's dedup records.",
    "relay_listen_dsn": "Give the relay a direct connection to PostgreSQL for LISTEN, e.g. "
    '"host=db-primary port=5432" (parameters left out come from the database\'s settings), '
    "or remove the key to listen on the database's own connection settings.",
    "queue_type": 'Use "classic" (the default: what existing deployments declared) or "quorum" '
    "(replicated, with a delivery limit and a dead-letter queue; RabbitMQ 3.10 or later). An "
    "existing queue keeps its type: see docs/operations.md, 'Moving to quorum queues'.",
    "broker_url": "Give an AMQP URL such as amqp://user:password@rabbitmq:5672//, or the "
    'nodes of a cluster ("amqp://u:p@rmq1:5672//;amqp://u:p@rmq2:5672//" or a list), or remove '
    "the key to use CELERY_BROKER_URL.",
}
_DEFAULT_HINT = "Remove the key to use the default ({default!r}), or see docs/settings.md."

assert set(RULES) == {f.name for f in dataclasses.fields(Settings)}, "every setting has a rule"


def _user_dict() -> Any:
    return getattr(settings, SETTING_NAME, None) or {}


def _not_a_dict(user: Any) -> Problem:
    return Problem(
        SETTING_NAME,
        f"settings.{SETTING_NAME} must be a dict, got {type(user).__name__}",
        f'Write {SETTING_NAME} = {{"SERVICE": "your-service", ...}}.',
        "inbox_outbox.E000",
    )


def problems() -> list[Problem]:
    """Every value of ``INBOX_OUTBOX`` that breaks its rule (for the system checks)."""
    user = _user_dict()
    if not isinstance(user, dict):
        return [_not_a_dict(user)]
    defaults = Settings()
    found = _duplicates(user)
    for name, (rule, check_id) in RULES.items():
        value = _lookup(user, name, getattr(defaults, name))
        wrong = rule(value)
        if wrong:
            hint = _HINTS.get(name) or _DEFAULT_HINT.format(default=getattr(defaults, name))
            found.append(
                Problem(name.upper(), f'{SETTING_NAME}["{name.upper()}"] {wrong}.', hint, check_id)
            )
    if not found:
        found += _relations(_build(user))
    return found


def _duplicates(user: dict[Any, Any]) -> list[Problem]:
    """Keys that name one setting in different case: which one wins would be a guess."""
    spellings: dict[str, list[str]] = {}
    for key in user:
        if isinstance(key, str) and key.lower() in RULES:
            spellings.setdefault(key.lower(), []).append(key)
    return [
        Problem(
            name.upper(),
            f"{SETTING_NAME} names {name.upper()} {len(keys)} times: "
            + ", ".join(repr(k) for k in keys)
            + ".",
            f'Keep one of them, spelled "{name.upper()}".',
            "inbox_outbox.E015",
        )
        for name, keys in spellings.items()
        if len(keys) > 1
    ]


def _relations(conf: Settings) -> list[Problem]:
    """Rules between two settings (each value already valid on its own)."""
    # RELAY_CONFIRM_TIMEOUT may exceed RELAY_LEASE_SECONDS: a working relay renews its
    # leases (outbox/lease.py), so the old rule "confirm timeout < lease" (E005) is gone.
    found = []
    longest = conf.dead_letter_name if conf.queue_type == "quorum" else conf.queue_name
    if len(longest.encode()) > AMQP_NAME_MAX_BYTES:
        found.append(
            Problem(
                "QUEUE_PREFIX",
                f'{SETTING_NAME}["QUEUE_PREFIX"] + "SERVICE" (the queue name'
                + (
                    f', with "{DEAD_LETTER_SUFFIX}" for its dead-letter queue'
                    if longest != conf.queue_name
                    else ""
                )
                + f") is longer than {AMQP_NAME_MAX_BYTES} bytes.",
                "Shorten QUEUE_PREFIX: AMQP queue names are at most 255 bytes.",
                "inbox_outbox.E014",
            )
        )
    for side in ("relay", "inbox"):
        base, cap = getattr(conf, f"{side}_backoff_base"), getattr(conf, f"{side}_backoff_max")
        if base > cap:
            found.append(
                Problem(
                    f"{side.upper()}_BACKOFF_BASE",
                    f'{SETTING_NAME}["{side.upper()}_BACKOFF_BASE"] ({base}) is larger than '
                    f'"{side.upper()}_BACKOFF_MAX" ({cap}).',
                    "The first retry would wait longer than the longest allowed wait.",
                    _NUMBER,
                )
            )
    return found


def _lookup(user: dict[str, Any], name: str, default: Any) -> Any:
    for key, value in user.items():
        if isinstance(key, str) and key.lower() == name:
            return value
    return default


def _build(user: dict[str, Any]) -> Settings:
    known = {f.name for f in dataclasses.fields(Settings)}
    values = {
        key.lower(): value
        for key, value in user.items()
        # Unknown keys are reported by the system check; ignored here.
        if isinstance(key, str) and key.lower() in known
    }
    return Settings(**values)


@functools.cache
def get_settings() -> Settings:
    """Return the resolved settings (cached until a setting changes).

    Raises :class:`ConfigurationError` naming every broken rule: the system checks report
    the same problems at start-up, one by one with their hints.
    """
    found = problems()
    if found:
        raise ConfigurationError(
            "INBOX_OUTBOX is not usable: "
            + " ".join(f"{p.message} {p.hint}" for p in found)
            + " (manage.py check lists each problem)"
        )
    return _build(_user_dict())


def unknown_keys() -> list[str]:
    """Keys of ``INBOX_OUTBOX`` that the library does not know (for the system check)."""
    user = _user_dict()
    if not isinstance(user, dict):
        return []
    return sorted(str(k) for k in user if not isinstance(k, str) or k.lower() not in RULES)


def broker_url_source() -> tuple[tuple[str, ...], str]:
    """The broker URLs the user configured and where they were found, or ``((), why not)``.

    In order: ``INBOX_OUTBOX["BROKER_URL"]``, Django's ``CELERY_BROKER_URL`` setting, then the
    broker of the project's Celery app (which also reads the ``CELERY_BROKER_URL`` environment
    variable). Never a default: a relay publishing to a broker the user did not name would
    look healthy while every message went elsewhere. Several URLs are the nodes of one
    cluster, tried in turn (:class:`inbox_outbox.broker.Nodes`).
    """
    configured = (
        _lookup(_user_dict(), "broker_url", None) if isinstance(_user_dict(), dict) else None
    )
    if configured is not None:
        wrong = _broker_url(configured)
        if wrong:  # never fall back past a URL the user wrote but got wrong
            return (), f'{SETTING_NAME}["BROKER_URL"] {wrong}'
        return split_broker_urls(configured)[0], f'{SETTING_NAME}["BROKER_URL"]'
    found: tuple[Any, str] | None = None
    celery_setting = getattr(settings, "CELERY_BROKER_URL", None)
    if _given(celery_setting):
        found = celery_setting, "settings.CELERY_BROKER_URL"
    else:
        from celery import current_app

        if _given(current_app.conf.broker_url):
            found = (
                current_app.conf.broker_url,
                f"the Celery app {current_app.main or '(default)'!r}",
            )
    if found is None:
        return (), (
            f'no broker is configured: neither {SETTING_NAME}["BROKER_URL"], nor the '
            "CELERY_BROKER_URL setting, nor a Celery app with broker_url"
        )
    urls, wrong = split_broker_urls(found[0])
    return ((), f"the broker URL of {found[1]} {wrong}") if wrong else (urls, found[1])


def _given(value: Any) -> bool:
    """Whether a Celery broker setting holds anything (blank means unset, as Celery reads it)."""
    return bool(value.strip()) if isinstance(value, str) else bool(value)


def broker_urls() -> tuple[str, ...]:
    """The broker's URLs, one per node (see :func:`broker_url_source`)."""
    urls, where = broker_url_source()
    if not urls:
        raise ConfigurationError(
            f"{where}. Set {SETTING_NAME}['BROKER_URL'] (or CELERY_BROKER_URL) to your "
            "broker, e.g. amqp://guest:guest@localhost:5672//."
        )
    return urls


def broker_url() -> str:
    """The broker to publish to and consume from, its nodes joined in kombu's failover form
    (``"amqp://a//;amqp://b//"``), which ``kombu.Connection`` and Celery take as they are."""
    return ";".join(broker_urls())


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        get_settings.cache_clear()
