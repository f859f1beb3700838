"""Configuration: read the config file and the environment once into a frozen :class:`Settings`.

This is the only module that reads ``os.environ``. Everything else receives a ``Settings`` (and an
``AppConfig`` per app) explicitly. Precedence, lowest first (spec 01 §9.5):

1. built-in defaults (spec 01 §9, spec 03 §1, spec 05 §11);
2. the config file: TOML, or JSON (``*.json`` or text starting with ``{``), after ``${VAR}`` /
   ``${VAR:-default}`` interpolation;
3. environment variables (names of spec 01 §9.5, spec 03 §1; spec 05 §11 keys also as the
   ``UPPER_SNAKE`` of their dotted name, e.g. ``EVENT_LOG_TOPIC_PREFIX``);
4. ``overrides`` from the command line, keyed by ``Settings`` attribute
   (``{"port": 7000, "log_backend": "kafka", "data_dir": "/srv/sockudo"}``).

Any invalid value raises :class:`~sockudo.errors.ConfigError` naming the key and its source, so
the node refuses to start instead of misbehaving later.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Literal

from sockudo.errors import ConfigError
from sockudo.origins import InvalidOriginPattern, validate_pattern

__all__ = [
    "DEV_APP_ID",
    "DEV_APP_KEY",
    "DEV_APP_SECRET",
    "WEBHOOK_EVENT_TYPES",
    "AppConfig",
    "AppFeatures",
    "AppLimits",
    "ChannelNamespace",
    "HistoryPolicy",
    "PresenceHistoryPolicy",
    "Settings",
    "WebhookConfig",
    "WebhookFilter",
    "load_settings",
]

_log = logging.getLogger(__name__)

DEV_APP_ID = "app-id"
DEV_APP_KEY = "app-key"
DEV_APP_SECRET = "app-secret"
"""The publicly known development credentials of spec 01 §9.4 (refused in production)."""

WEBHOOK_EVENT_TYPES = frozenset(
    {
        "channel_occupied",
        "channel_vacated",
        "member_added",
        "member_removed",
        "client_event",
        "cache_miss",
        "subscription_count",
        "member_updated",
    }
)
"""Webhook ``event_types`` a config may name (spec 01 §8)."""

LogBackend = Literal["embedded", "kafka"]
FsyncMode = Literal["always", "interval", "never"]
ServerRole = Literal["default", "api"]
HttpServer = Literal["uvicorn", "hypercorn"]


# --------------------------------------------------------------------------------------------
# Per-app model (spec 01 §9.1-9.3, spec 03 §1.1)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppLimits:
    """An app's limits, fully resolved: omitted values already hold the server-wide defaults."""

    max_connections: int = 0
    """0 = unlimited (close 4004 when reached)."""
    max_backend_events_per_second: int | None = None
    """``None`` = unlimited; counts one unit per event x channel on ``/events`` and batches."""
    max_client_events_per_second: int = 0
    """0 = unlimited."""
    decay_seconds: int = 1
    terminate_on_limit: bool = False
    max_read_requests_per_second: int | None = None
    """Stored, not enforced (spec 01 §3.14)."""
    max_presence_members_per_channel: int = 100
    max_presence_member_size_in_kb: int = 2
    max_channel_name_length: int = 200
    """Bytes; a namespace may override it."""
    max_event_channels_at_once: int = 100
    max_event_name_length: int = 200
    max_event_payload_in_kb: int = 100
    max_event_batch_size: int = 10


@dataclass(frozen=True, slots=True)
class AppFeatures:
    """Feature switches of an app (spec 01 §9.1)."""

    enable_client_messages: bool = False
    enable_user_authentication: bool = False
    enable_watchlist_events: bool = False


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """History overrides of an app or namespace; ``None`` = inherit (spec 03 §1.1).

    For the retention fields an explicit ``0`` means "unlimited" (it overrides an inherited
    limit); ``enabled`` exists only at app level (namespaces have no such key).
    """

    enabled: bool | None = None
    rewind_enabled: bool | None = None
    retention_window_seconds: int | None = None
    max_messages_per_channel: int | None = None
    max_bytes_per_channel: int | None = None


@dataclass(frozen=True, slots=True)
class PresenceHistoryPolicy:
    """Presence-history overrides of an app or namespace; ``None`` = inherit, ``0`` = unlimited."""

    enabled: bool | None = None
    retention_window_seconds: int | None = None
    max_events_per_channel: int | None = None
    max_bytes_per_channel: int | None = None


@dataclass(frozen=True, slots=True)
class ChannelNamespace:
    """One entry of ``policy.channels.channel_namespaces`` (spec 01 §9.2)."""

    name: str
    channel_name_pattern: re.Pattern[str] | None = None
    """Searched in the channel name without type prefix and without ``#...``."""
    max_channel_name_length: int | None = None
    """Bytes; overrides the app limit when set."""
    allow_user_limited_channels: bool = False
    allow_subscribe_for_client: bool | None = None
    allow_publish_for_client: bool | None = None
    allow_presence_for_client: bool | None = None
    annotations_enabled: bool | None = None
    history: HistoryPolicy = field(default_factory=HistoryPolicy)
    presence_history: PresenceHistoryPolicy = field(default_factory=PresenceHistoryPolicy)


@dataclass(frozen=True, slots=True)
class WebhookFilter:
    """Channel constraints of a webhook; every given constraint must match (spec 01 §8)."""

    channel_prefix: str | None = None
    channel_suffix: str | None = None
    channel_pattern: re.Pattern[str] | None = None
    channel_namespace: str | None = None
    channel_namespaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One webhook target of an app."""

    url: str
    event_types: frozenset[str]
    filter: WebhookFilter = field(default_factory=WebhookFilter)
    headers: tuple[tuple[str, str], ...] = ()
    request_timeout_ms: int | None = None
    """``None`` = the global ``webhooks.request_timeout_ms``."""


@dataclass(frozen=True, slots=True)
class AppConfig:
    """One application: credentials, limits, features and channel policy."""

    id: str
    key: str
    secret: str = field(repr=False)
    enabled: bool = True
    limits: AppLimits = field(default_factory=AppLimits)
    features: AppFeatures = field(default_factory=AppFeatures)
    allowed_origins: tuple[str, ...] | None = None
    """``None`` = any origin; patterns already validated (spec 01 §9.3)."""
    channel_namespaces: tuple[ChannelNamespace, ...] = ()
    annotations_enabled: bool | None = None
    """``policy.channels.annotations_enabled``; ``None`` = not set (resolves to false)."""
    history: HistoryPolicy = field(default_factory=HistoryPolicy)
    presence_history: PresenceHistoryPolicy = field(default_factory=PresenceHistoryPolicy)
    idempotency_enabled: bool | None = None
    """``policy.idempotency.enabled``; ``None`` = the global switch."""
    idempotency_ttl_seconds: int | None = None
    """``policy.idempotency.ttl_seconds``; ``None`` = the global TTL."""
    connection_recovery_enabled: bool | None = None
    """``policy.connection_recovery.enabled``; ``None`` = the global switch."""
    webhooks: tuple[WebhookConfig, ...] = ()
    _namespaces: Mapping[str, ChannelNamespace] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen: the lookup table is derived once; object.__setattr__ is the documented way.
        table = {ns.name: ns for ns in self.channel_namespaces}
        object.__setattr__(self, "_namespaces", MappingProxyType(table))

    def namespace(self, name: str) -> ChannelNamespace | None:
        """The namespace called ``name``, or ``None``."""
        return self._namespaces.get(name)

    @property
    def history_enabled(self) -> bool | None:
        """``policy.history.enabled``; ``None`` = the global switch (spec 03 §1.1)."""
        return self.history.enabled


def _hostname() -> str:
    return socket.gethostname() or "localhost"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the node was configured with. Immutable; build it with :func:`load_settings`."""

    # -- listeners and server (spec 01 §1, §9.5)
    host: str = "0.0.0.0"
    port: int = 6001
    metrics_enabled: bool = True
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9601
    metrics_prefix: str = "sockudo_"
    environment: str = "development"
    """Lower-case mode label; ``production`` refuses the development credentials."""
    debug: bool = False
    usage_enabled: bool = True
    """``/usage``, ``/stats`` and ``/operator/stats``."""
    server_role: ServerRole = "default"
    http_server: HttpServer = "uvicorn"
    """ASGI server of the listeners (sockudo/node/serving.py says why uvicorn by default)."""
    request_limit_in_mb: int = 10
    """HTTP body limit of the ``/apps`` POST routes (push routes have their own 1 MiB)."""
    activity_timeout: int = 120
    websocket_auto_ping: bool = True
    """V2 native heartbeat (spec 02 §10.1); ``False`` keeps V2 on the ``sockudo:ping`` fallback."""
    websocket_ping_interval: int = 30
    """Seconds; V2 pings every ``max(this, activity_timeout / 2)``. 0 = no native pings."""
    websocket_pong_timeout: int = 30
    """Seconds a server ping (native or ``pusher:ping``/``sockudo:ping``) may go unanswered
    before the 4201 close (spec 01 §3.2, spec 02 §10.1)."""
    user_authentication_timeout: int = 3600
    shutdown_grace_period: int = 10
    max_connections: int = 0
    """Node-wide connection cap; 0 = unlimited."""
    websocket_max_payload_kb: int = 64
    health_check_timeout_ms: int = 2000
    presence_ungraceful_timeout_seconds: int = 0
    cache_ttl_seconds: int = 3600
    connection_recovery_enabled: bool = True
    tag_filtering_enabled: bool = True
    echo_control_enabled: bool = True
    echo_default_messages: bool = True
    # -- storage and event log (spec 05 §11)
    data_dir: str = "./data"
    log_backend: LogBackend = "embedded"
    kafka_bootstrap_servers: str | None = None
    """Comma-separated ``host:port`` list; required for the kafka backend."""
    kafka_replication_factor: int | None = None
    """``None`` = min(3, brokers)."""
    kafka_linger_ms: int = 0
    topic_prefix: str = "sockudo"
    channel_partitions: int | None = None
    """``None`` = the backend default; see :attr:`effective_channel_partitions`."""
    ack_timeout_ms: int = 5000
    """Append acknowledgement timeout; :func:`load_settings` defaults it to
    :attr:`history_write_timeout_ms`."""
    fold_wait_timeout_ms: int = 5000
    embedded_log_dir: str = "./data/log"
    """:func:`load_settings` derives it from :attr:`data_dir` (``{data_dir}/log``) unless set."""
    embedded_fsync: FsyncMode = "always"
    embedded_fsync_interval_ms: int = 100
    embedded_max_record_bytes: int = 1048576
    projection_dir: str = "./data/projection"
    """:func:`load_settings` derives it from :attr:`data_dir` unless set."""
    projection_batch_max_records: int = 500
    projection_batch_max_ms: int = 5
    projection_max_lag_records: int = 50000
    projection_snapshot_interval_records: int = 1000000
    """0 = no snapshots."""
    node_id: str = field(default_factory=_hostname)
    heartbeat_interval_ms: int = 5000
    node_timeout_ms: int = 15000
    # -- durable history (spec 03 §1); ``None`` limits are unlimited
    history_enabled: bool = True
    history_rewind_enabled: bool = True
    history_retention_window_seconds: int | None = 86400
    history_max_messages_per_channel: int | None = None
    history_max_bytes_per_channel: int | None = None
    history_max_page_size: int = 100
    """Default and cap of ``limit`` (global only; also caps WS ``channel_history``)."""
    history_purge_interval_seconds: int = 300
    history_purge_batch_size: int = 1000
    history_max_purge_per_tick: int = 100000
    history_write_timeout_ms: int = 5000
    """Default of :attr:`ack_timeout_ms`."""
    presence_history_enabled: bool = True
    presence_history_retention_window_seconds: int | None = 86400
    presence_history_max_events_per_channel: int | None = None
    presence_history_max_bytes_per_channel: int | None = None
    presence_history_max_page_size: int = 100
    versioned_messages_enabled: bool = False
    versioned_messages_max_page_size: int = 100
    versioned_messages_retention_window_seconds: int | None = None
    """``None`` (config 0) = keep versions forever."""
    annotations_enabled: bool = False
    # -- publish dedupe (spec 01 §5.3, spec 03 §8)
    idempotency_enabled: bool = True
    idempotency_ttl_seconds: int = 120
    idempotency_max_key_length: int = 128
    """UTF-8 bytes; global only."""
    # -- per-IP limiter (spec 01 §9.5), webhooks (§8), CORS
    rate_limiter_enabled: bool = False
    rate_limiter_api_max_requests: int = 100
    rate_limiter_api_window_seconds: int = 60
    rate_limiter_api_trust_hops: int = 0
    rate_limiter_ws_max_requests: int = 20
    rate_limiter_ws_window_seconds: int = 60
    rate_limiter_ws_trust_hops: int = 0
    webhook_batching_enabled: bool = True
    webhook_batching_duration_ms: int = 50
    webhook_batching_size: int = 100
    webhook_request_timeout_ms: int = 10000
    cors_origins: tuple[str, ...] = ("*",)
    cors_methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    cors_headers: tuple[str, ...] = ("Authorization", "Content-Type", "X-Requested-With", "Accept")
    cors_credentials: bool = True
    default_app_limits: AppLimits = field(default_factory=AppLimits)
    """Server-wide limits an app inherits when it omits one (``[channel_limits]`` etc.)."""
    # -- apps
    apps: tuple[AppConfig, ...] = ()
    dev_app_in_use: bool = False
    """True when the built-in development app was registered (spec 01 §9.4)."""
    _by_id: Mapping[str, AppConfig] = field(init=False, repr=False, compare=False)
    _by_key: Mapping[str, AppConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, AppConfig] = {}
        by_key: dict[str, AppConfig] = {}
        for app in self.apps:
            if app.id in by_id:
                raise ConfigError(f"duplicate app id {app.id!r}")
            if app.key in by_key:
                raise ConfigError(
                    f"duplicate app key {app.key!r} (apps {by_key[app.key].id!r}, {app.id!r})"
                )
            by_id[app.id] = app
            by_key[app.key] = app
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))
        object.__setattr__(self, "_by_key", MappingProxyType(by_key))

    def app_by_id(self, app_id: str) -> AppConfig | None:
        """The app with this id, or ``None`` (O(1))."""
        return self._by_id.get(app_id)

    def app_by_key(self, key: str) -> AppConfig | None:
        """The app with this key, or ``None`` (O(1))."""
        return self._by_key.get(key)

    @property
    def effective_channel_partitions(self) -> int:
        """Partitions of ``channel-events``: configured, else 1 (embedded) or 24 (kafka)."""
        if self.channel_partitions is not None:
            return self.channel_partitions
        return 24 if self.log_backend == "kafka" else 1

    @property
    def http_request_limit_bytes(self) -> int:
        """``request_limit_in_mb`` in bytes: the body limit of the ``/apps`` POST routes."""
        return self.request_limit_in_mb * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Value parsers. Each takes the raw value and a description of where it came from, so errors
# name the exact key and source ("PORT (environment)", "'port' in config.toml").
# --------------------------------------------------------------------------------------------

_Parser = Callable[[object, str], Any]

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
# Bounded: int() of a huge digit string is slow and raises past 4300 digits.
_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")


def _parse_bool(raw: object, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(f"{where}: expected a boolean (true/false/1/0/yes/no/on/off), got {raw!r}")


def _int_parser(minimum: int = 0, maximum: int | None = None) -> _Parser:
    def parse(raw: object, where: str) -> int:
        value: int
        if isinstance(raw, bool):  # bool is an int subclass; `true` is not a number
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, float) and raw.is_integer():
            value = int(raw)
        elif isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
            # Numbers may be given as strings ("100"), spec 01 §9.1; int() alone would also
            # accept "1_000" and non-ASCII digits, hence the regex.
            value = int(raw.strip())
        else:
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        if value < minimum:
            raise ConfigError(f"{where}: must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{where}: must be <= {maximum}, got {value}")
        return value

    return parse


def _opt_int_parser(minimum: int = 0) -> _Parser:
    inner = _int_parser(minimum)

    def parse(raw: object, where: str) -> int | None:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        result: int = inner(raw, where)
        return result

    return parse


def _limit_parser(raw: object, where: str) -> int | None:
    """A retention limit: absent/``null`` or 0 = unlimited (``None``)."""
    value = _opt_int_parser(0)(raw, where)
    return None if value == 0 else value


def _str_parser(*, allow_empty: bool = False) -> _Parser:
    def parse(raw: object, where: str) -> str:
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise ConfigError(f"{where}: expected a string, got {raw!r}")
        text = str(raw)
        if not allow_empty and not text.strip():
            raise ConfigError(f"{where}: must not be empty")
        return text

    return parse


def _opt_str_parser(raw: object, where: str) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    result: str = _str_parser()(raw, where)
    return result


def _choice_parser(*choices: str) -> _Parser:
    def parse(raw: object, where: str) -> str:
        text: str = _str_parser()(raw, where)
        text = text.strip().lower()
        if text not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {raw!r}")
        return text

    return parse


def _str_list_parser(raw: object, where: str) -> tuple[str, ...]:
    """A list of strings, or one comma-separated string (environment form)."""
    items: Iterable[object]
    if isinstance(raw, str):
        items = raw.split(",")
    elif isinstance(raw, list | tuple):
        items = raw
    else:
        raise ConfigError(f"{where}: expected a list of strings, got {raw!r}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: expected a list of strings, got item {item!r}")
        if item.strip():
            out.append(item.strip())
    return tuple(out)


def _bootstrap_parser(raw: object, where: str) -> str | None:
    if isinstance(raw, list | tuple):
        return ",".join(_str_list_parser(raw, where)) or None
    return _opt_str_parser(raw, where)


# --------------------------------------------------------------------------------------------
# The table of scalar settings: Settings attribute (``default_app_limits.<field>`` for the
# server-wide app limits), file paths (first present wins), environment names (first set wins),
# parser. Defaults live in the dataclasses above, so each is written down exactly once.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    attr: str
    paths: tuple[str, ...]
    env: tuple[str, ...]
    parse: _Parser


def _k(attr: str, path: str | tuple[str, ...], env: str | tuple[str, ...], parse: _Parser) -> _Key:
    paths = (path,) if isinstance(path, str) else path
    envs = (env,) if isinstance(env, str) else env
    return _Key(attr, paths, envs, parse)


_INT0 = _int_parser(0)
_INT1 = _int_parser(1)
_PORT = _int_parser(0, 65535)  # 0 = pick a free port (tests)
_STR = _str_parser()
_STR0 = _str_parser(allow_empty=True)

_KEYS: tuple[_Key, ...] = (
    _k("host", "host", "HOST", _STR),
    _k("port", "port", "PORT", _PORT),
    _k("metrics_enabled", "metrics.enabled", "METRICS_ENABLED", _parse_bool),
    _k("metrics_host", "metrics.host", "METRICS_HOST", _STR),
    _k("metrics_port", "metrics.port", "METRICS_PORT", _PORT),
    _k("metrics_prefix", "metrics.prometheus.prefix", "METRICS_PROMETHEUS_PREFIX", _STR0),
    _k("environment", "environment", "ENVIRONMENT", _STR),
    _k("debug", "debug", ("DEBUG", "DEBUG_MODE"), _parse_bool),
    _k("usage_enabled", "http_api.usage_enabled", "HTTP_API_USAGE_ENABLED", _parse_bool),
    _k("server_role", "server_role", "SOCKUDO_SERVER_ROLE", _choice_parser("default", "api")),
    _k("http_server", "http_server", "SOCKUDO_HTTP_SERVER", _choice_parser("uvicorn", "hypercorn")),
    _k(
        "request_limit_in_mb", "http_api.request_limit_in_mb", "HTTP_API_REQUEST_LIMIT_IN_MB", _INT1
    ),
    _k("activity_timeout", "activity_timeout", "ACTIVITY_TIMEOUT", _INT1),
    _k("websocket_auto_ping", "websocket.auto_ping", "WEBSOCKET_AUTO_PING", _parse_bool),
    _k("websocket_ping_interval", "websocket.ping_interval", "WEBSOCKET_PING_INTERVAL", _INT0),
    _k("websocket_pong_timeout", "websocket.pong_timeout", "WEBSOCKET_PONG_TIMEOUT", _INT1),
    _k(
        "user_authentication_timeout",
        "user_authentication_timeout",
        "USER_AUTHENTICATION_TIMEOUT",
        _INT1,
    ),
    _k("shutdown_grace_period", "shutdown_grace_period", "SHUTDOWN_GRACE_PERIOD", _INT0),
    _k("max_connections", "max_connections", "SOCKUDO_MAX_CONNECTIONS", _INT0),
    _k("websocket_max_payload_kb", "websocket_max_payload_kb", "WEBSOCKET_MAX_PAYLOAD_KB", _INT1),
    _k("health_check_timeout_ms", "health_check_timeout_ms", "HEALTH_CHECK_TIMEOUT_MS", _INT1),
    _k(
        "presence_ungraceful_timeout_seconds",
        "presence.ungraceful_timeout_seconds",
        "PRESENCE_UNGRACEFUL_TIMEOUT_SECONDS",
        _INT0,
    ),
    _k("cache_ttl_seconds", "channel_limits.cache_ttl", "CHANNEL_CACHE_TTL", _INT1),
    _k(
        "connection_recovery_enabled",
        "connection_recovery.enabled",
        "CONNECTION_RECOVERY_ENABLED",
        _parse_bool,
    ),
    _k("tag_filtering_enabled", "tag_filtering.enabled", "TAG_FILTERING_ENABLED", _parse_bool),
    _k("echo_control_enabled", "echo_control.enabled", "ECHO_CONTROL_ENABLED", _parse_bool),
    _k(
        "echo_default_messages",
        "echo_control.default_echo_messages",
        "ECHO_CONTROL_DEFAULT_ECHO_MESSAGES",
        _parse_bool,
    ),
    # -- event log, projection, cluster (spec 05 §11)
    _k("data_dir", "data_dir", "SOCKUDO_DATA_DIR", _STR),
    _k(
        "log_backend",
        "event_log.backend",
        ("SOCKUDO_LOG", "EVENT_LOG_BACKEND"),
        _choice_parser("embedded", "kafka"),
    ),
    _k(
        "kafka_bootstrap_servers",
        "event_log.kafka.bootstrap_servers",
        ("KAFKA_BOOTSTRAP_SERVERS", "SOCKUDO_KAFKA_BOOTSTRAP", "EVENT_LOG_KAFKA_BOOTSTRAP_SERVERS"),
        _bootstrap_parser,
    ),
    _k(
        "kafka_replication_factor",
        "event_log.kafka.replication_factor",
        "EVENT_LOG_KAFKA_REPLICATION_FACTOR",
        _opt_int_parser(1),
    ),
    _k("kafka_linger_ms", "event_log.kafka.linger_ms", "EVENT_LOG_KAFKA_LINGER_MS", _INT0),
    _k("topic_prefix", "event_log.topic_prefix", "EVENT_LOG_TOPIC_PREFIX", _STR),
    _k(
        "channel_partitions",
        "event_log.channel_partitions",
        "EVENT_LOG_CHANNEL_PARTITIONS",
        _opt_int_parser(1),
    ),
    _k("ack_timeout_ms", "event_log.ack_timeout_ms", "EVENT_LOG_ACK_TIMEOUT_MS", _INT1),
    _k(
        "fold_wait_timeout_ms",
        "event_log.fold_wait_timeout_ms",
        "EVENT_LOG_FOLD_WAIT_TIMEOUT_MS",
        _INT1,
    ),
    _k("embedded_log_dir", "event_log.embedded.dir", "EVENT_LOG_EMBEDDED_DIR", _STR),
    _k(
        "embedded_fsync",
        "event_log.embedded.fsync",
        "EVENT_LOG_EMBEDDED_FSYNC",
        _choice_parser("always", "interval", "never"),
    ),
    _k(
        "embedded_fsync_interval_ms",
        "event_log.embedded.fsync_interval_ms",
        "EVENT_LOG_EMBEDDED_FSYNC_INTERVAL_MS",
        _INT1,
    ),
    _k(
        "embedded_max_record_bytes",
        "event_log.embedded.max_record_bytes",
        "EVENT_LOG_EMBEDDED_MAX_RECORD_BYTES",
        _INT1,
    ),
    _k("projection_dir", "projection.dir", "PROJECTION_DIR", _STR),
    _k(
        "projection_batch_max_records",
        "projection.batch_max_records",
        "PROJECTION_BATCH_MAX_RECORDS",
        _INT1,
    ),
    _k("projection_batch_max_ms", "projection.batch_max_ms", "PROJECTION_BATCH_MAX_MS", _INT0),
    _k(
        "projection_max_lag_records",
        "projection.max_lag_records",
        "PROJECTION_MAX_LAG_RECORDS",
        _INT1,
    ),
    _k(
        "projection_snapshot_interval_records",
        "projection.snapshot_interval_records",
        "PROJECTION_SNAPSHOT_INTERVAL_RECORDS",
        _INT0,
    ),
    # NODE_ID is the short alias the test harness and the CLI help use.
    _k("node_id", "cluster.node_id", ("CLUSTER_NODE_ID", "NODE_ID"), _STR),
    _k(
        "heartbeat_interval_ms",
        "cluster.heartbeat_interval_ms",
        "CLUSTER_HEARTBEAT_INTERVAL_MS",
        _INT1,
    ),
    _k("node_timeout_ms", "cluster.node_timeout_ms", "CLUSTER_NODE_TIMEOUT_MS", _INT1),
    # -- history, presence history, versioned messages, annotations (spec 03 §1)
    _k("history_enabled", "history.enabled", "HISTORY_ENABLED", _parse_bool),
    _k("history_rewind_enabled", "history.rewind_enabled", "HISTORY_REWIND_ENABLED", _parse_bool),
    _k(
        "history_retention_window_seconds",
        "history.retention_window_seconds",
        "HISTORY_RETENTION_WINDOW_SECONDS",
        _limit_parser,
    ),
    _k(
        "history_max_messages_per_channel",
        "history.max_messages_per_channel",
        "HISTORY_MAX_MESSAGES_PER_CHANNEL",
        _limit_parser,
    ),
    _k(
        "history_max_bytes_per_channel",
        "history.max_bytes_per_channel",
        "HISTORY_MAX_BYTES_PER_CHANNEL",
        _limit_parser,
    ),
    _k("history_max_page_size", "history.max_page_size", "HISTORY_MAX_PAGE_SIZE", _INT1),
    _k(
        "history_purge_interval_seconds",
        "history.purge_interval_seconds",
        "HISTORY_PURGE_INTERVAL_SECONDS",
        _INT1,
    ),
    _k("history_purge_batch_size", "history.purge_batch_size", "HISTORY_PURGE_BATCH_SIZE", _INT1),
    _k(
        "history_max_purge_per_tick",
        "history.max_purge_per_tick",
        "HISTORY_MAX_PURGE_PER_TICK",
        _INT1,
    ),
    _k(
        "history_write_timeout_ms",
        # Upstream nests it under the history backend ("history.postgres.write_timeout_ms").
        ("history.write_timeout_ms", "history.postgres.write_timeout_ms"),
        "HISTORY_WRITE_TIMEOUT_MS",
        _INT1,
    ),
    _k(
        "presence_history_enabled",
        "presence_history.enabled",
        "PRESENCE_HISTORY_ENABLED",
        _parse_bool,
    ),
    _k(
        "presence_history_retention_window_seconds",
        "presence_history.retention_window_seconds",
        "PRESENCE_HISTORY_RETENTION_WINDOW_SECONDS",
        _limit_parser,
    ),
    _k(
        "presence_history_max_events_per_channel",
        "presence_history.max_events_per_channel",
        "PRESENCE_HISTORY_MAX_EVENTS_PER_CHANNEL",
        _limit_parser,
    ),
    _k(
        "presence_history_max_bytes_per_channel",
        "presence_history.max_bytes_per_channel",
        "PRESENCE_HISTORY_MAX_BYTES_PER_CHANNEL",
        _limit_parser,
    ),
    _k(
        "presence_history_max_page_size",
        "presence_history.max_page_size",
        "PRESENCE_HISTORY_MAX_PAGE_SIZE",
        _INT1,
    ),
    _k(
        "versioned_messages_enabled",
        "versioned_messages.enabled",
        "VERSIONED_MESSAGES_ENABLED",
        _parse_bool,
    ),
    _k(
        "versioned_messages_max_page_size",
        "versioned_messages.max_page_size",
        "VERSIONED_MESSAGES_MAX_PAGE_SIZE",
        _INT1,
    ),
    _k(
        "versioned_messages_retention_window_seconds",
        "versioned_messages.retention_window_seconds",
        "VERSIONED_MESSAGES_RETENTION_WINDOW_SECONDS",
        _limit_parser,
    ),
    _k("annotations_enabled", "annotations.enabled", "ANNOTATIONS_ENABLED", _parse_bool),
    _k("idempotency_enabled", "idempotency.enabled", "IDEMPOTENCY_ENABLED", _parse_bool),
    _k("idempotency_ttl_seconds", "idempotency.ttl_seconds", "IDEMPOTENCY_TTL_SECONDS", _INT1),
    _k(
        "idempotency_max_key_length",
        "idempotency.max_key_length",
        "IDEMPOTENCY_MAX_KEY_LENGTH",
        _INT1,
    ),
    # -- rate limiter, webhooks, CORS (spec 01 §8, §9.5)
    _k("rate_limiter_enabled", "rate_limiter.enabled", "RATE_LIMITER_ENABLED", _parse_bool),
    _k(
        "rate_limiter_api_max_requests",
        "rate_limiter.api_rate_limit.max_requests",
        "RATE_LIMITER_API_MAX_REQUESTS",
        _INT1,
    ),
    _k(
        "rate_limiter_api_window_seconds",
        "rate_limiter.api_rate_limit.window_seconds",
        "RATE_LIMITER_API_WINDOW_SECONDS",
        _INT1,
    ),
    _k(
        "rate_limiter_api_trust_hops",
        "rate_limiter.api_rate_limit.trust_hops",
        "RATE_LIMITER_API_TRUST_HOPS",
        _INT0,
    ),
    _k(
        "rate_limiter_ws_max_requests",
        "rate_limiter.websocket_rate_limit.max_requests",
        "RATE_LIMITER_WS_MAX_REQUESTS",
        _INT1,
    ),
    _k(
        "rate_limiter_ws_window_seconds",
        "rate_limiter.websocket_rate_limit.window_seconds",
        "RATE_LIMITER_WS_WINDOW_SECONDS",
        _INT1,
    ),
    _k(
        "rate_limiter_ws_trust_hops",
        "rate_limiter.websocket_rate_limit.trust_hops",
        "RATE_LIMITER_WS_TRUST_HOPS",
        _INT0,
    ),
    _k(
        "webhook_batching_enabled",
        "webhooks.batching.enabled",
        "WEBHOOK_BATCHING_ENABLED",
        _parse_bool,
    ),
    _k(
        "webhook_batching_duration_ms",
        "webhooks.batching.duration",
        "WEBHOOK_BATCHING_DURATION",
        _INT1,
    ),
    _k("webhook_batching_size", "webhooks.batching.size", "WEBHOOK_BATCHING_SIZE", _INT1),
    _k(
        "webhook_request_timeout_ms",
        "webhooks.request_timeout_ms",
        "WEBHOOK_REQUEST_TIMEOUT_MS",
        _INT1,
    ),
    _k("cors_origins", "cors.origin", "CORS_ORIGINS", _str_list_parser),
    _k("cors_methods", "cors.methods", "CORS_METHODS", _str_list_parser),
    _k("cors_headers", "cors.allowed_headers", "CORS_HEADERS", _str_list_parser),
    _k("cors_credentials", "cors.credentials", "CORS_CREDENTIALS", _parse_bool),
    # -- server-wide app limit defaults (spec 01 §9.1, last paragraph); file only
    _k("default_app_limits.max_channel_name_length", "channel_limits.max_name_length", (), _INT1),
    _k(
        "default_app_limits.max_event_channels_at_once",
        "event_limits.max_channels_at_once",
        (),
        _INT1,
    ),
    _k("default_app_limits.max_event_name_length", "event_limits.max_name_length", (), _INT1),
    _k("default_app_limits.max_event_payload_in_kb", "event_limits.max_payload_in_kb", (), _INT1),
    _k("default_app_limits.max_event_batch_size", "event_limits.max_batch_size", (), _INT1),
    _k(
        "default_app_limits.max_presence_members_per_channel",
        "presence.max_members_per_channel",
        (),
        _INT1,
    ),
    _k(
        "default_app_limits.max_presence_member_size_in_kb",
        "presence.max_member_size_in_kb",
        (),
        _INT1,
    ),
)

_KEYS_BY_ATTR: Mapping[str, _Key] = MappingProxyType({k.attr: k for k in _KEYS})


# --------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(text: str, environ: Mapping[str, str], *, skip_comment_lines: bool) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}``; every unset ``${VAR}`` is reported at once.

    ``:-`` follows the shell: the default also applies when the variable is set but empty.
    Whole-line TOML comments are left alone so a commented-out example cannot stop the node.
    """
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            if name not in missing:
                missing.append(name)
            return ""
        return value

    lines = text.splitlines(keepends=True)
    out = [
        line
        if skip_comment_lines and line.lstrip().startswith("#")
        else _VAR_RE.sub(substitute, line)
        for line in lines
    ]
    if missing:
        raise ConfigError(
            "config file references unset environment variables (use ${VAR:-default} for "
            f"optional ones): {', '.join(missing)}"
        )
    return "".join(out)


def _read_file(path: str, environ: Mapping[str, str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid UTF-8: {exc}") from exc
    is_json = path.lower().endswith(".json") or text.lstrip().startswith("{")
    text = _interpolate(text, environ, skip_comment_lines=not is_json)
    try:
        doc: object = json.loads(text) if is_json else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"config file {path!r} does not parse as {'JSON' if is_json else 'TOML'}: {exc}"
        ) from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path!r} must hold a table/object at the top level")
    return doc


_MISSING = object()


def _lookup(doc: Mapping[str, Any], dotted: str, where_file: str) -> object:
    node: object = doc
    walked: list[str] = []
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            raise ConfigError(f"'{'.'.join(walked)}' in {where_file}: expected a table")
        walked.append(part)
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


# --------------------------------------------------------------------------------------------
# Apps
# --------------------------------------------------------------------------------------------


def _table(raw: object, where: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table/object, got {type(raw).__name__}")
    return raw


def _get(
    table: Mapping[str, Any], name: str, parse: _Parser, where: str, default: Any = None
) -> Any:
    """``table[name]`` parsed, or ``default`` when absent or ``null``."""
    raw = table.get(name)
    if raw is None:
        return default
    return parse(raw, f"{where}.{name}")


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression {pattern!r}: {exc}") from exc


def _validate_origins(origins: tuple[str, ...], where: str) -> tuple[str, ...]:
    for origin in origins:
        try:
            validate_pattern(origin)
        except InvalidOriginPattern as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return origins


def _parse_origins(raw: object, where: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, list | tuple) and any(isinstance(o, str) and not o.strip() for o in raw):
        raise ConfigError(f"{where}: empty origin pattern")
    return _validate_origins(_str_list_parser(raw, where), where)


def _history_policy(raw: object, where: str, *, with_enabled: bool) -> HistoryPolicy:
    t = _table(raw, where)
    return HistoryPolicy(
        enabled=_get(t, "enabled", _parse_bool, where) if with_enabled else None,
        rewind_enabled=_get(t, "rewind_enabled", _parse_bool, where),
        retention_window_seconds=_get(t, "retention_window_seconds", _INT0, where),
        max_messages_per_channel=_get(t, "max_messages_per_channel", _INT0, where),
        max_bytes_per_channel=_get(t, "max_bytes_per_channel", _INT0, where),
    )


def _presence_history_policy(raw: object, where: str) -> PresenceHistoryPolicy:
    t = _table(raw, where)
    return PresenceHistoryPolicy(
        enabled=_get(t, "enabled", _parse_bool, where),
        retention_window_seconds=_get(t, "retention_window_seconds", _INT0, where),
        max_events_per_channel=_get(t, "max_events_per_channel", _INT0, where),
        max_bytes_per_channel=_get(t, "max_bytes_per_channel", _INT0, where),
    )


def _namespace(raw: object, where: str) -> ChannelNamespace:
    t = _table(raw, where)
    name = _get(t, "name", _STR, where)
    if name is None:
        raise ConfigError(f"{where}.name: required")
    if ":" in name:
        raise ConfigError(f"{where}.name: must not contain ':' (got {name!r})")
    pattern = _get(t, "channel_name_pattern", _opt_str_parser, where)
    return ChannelNamespace(
        name=name,
        channel_name_pattern=_compile(pattern, f"{where}.channel_name_pattern")
        if pattern
        else None,
        max_channel_name_length=_get(t, "max_channel_name_length", _INT1, where),
        allow_user_limited_channels=_get(
            t, "allow_user_limited_channels", _parse_bool, where, False
        ),
        allow_subscribe_for_client=_get(t, "allow_subscribe_for_client", _parse_bool, where),
        allow_publish_for_client=_get(t, "allow_publish_for_client", _parse_bool, where),
        allow_presence_for_client=_get(t, "allow_presence_for_client", _parse_bool, where),
        annotations_enabled=_get(t, "annotations_enabled", _parse_bool, where),
        history=_history_policy(t.get("history"), f"{where}.history", with_enabled=False),
        presence_history=_presence_history_policy(
            t.get("presence_history"), f"{where}.presence_history"
        ),
    )


def _webhook(raw: object, where: str) -> WebhookConfig:
    t = _table(raw, where)
    url = _get(t, "url", _STR, where)
    if url is None:
        raise ConfigError(f"{where}.url: required (only HTTP webhooks are supported)")
    event_types = frozenset(_get(t, "event_types", _str_list_parser, where, ()))
    unknown = sorted(event_types - WEBHOOK_EVENT_TYPES)
    if unknown:
        raise ConfigError(f"{where}.event_types: unknown event type(s) {', '.join(unknown)}")
    f = _table(t.get("filter"), f"{where}.filter")
    fw = f"{where}.filter"
    pattern = _get(f, "channel_pattern", _opt_str_parser, fw)
    headers_raw = _table(t.get("headers"), f"{where}.headers")
    headers = tuple((str(k), _STR(v, f"{where}.headers.{k}")) for k, v in headers_raw.items())
    return WebhookConfig(
        url=url,
        event_types=event_types,
        filter=WebhookFilter(
            channel_prefix=_get(f, "channel_prefix", _opt_str_parser, fw),
            channel_suffix=_get(f, "channel_suffix", _opt_str_parser, fw),
            channel_pattern=_compile(pattern, f"{fw}.channel_pattern") if pattern else None,
            channel_namespace=_get(f, "channel_namespace", _opt_str_parser, fw),
            channel_namespaces=_get(f, "channel_namespaces", _str_list_parser, fw, ()),
        ),
        headers=headers,
        request_timeout_ms=_get(t, "request_timeout_ms", _INT1, where),
    )


_LIMIT_PARSERS: Mapping[str, _Parser] = MappingProxyType(
    {
        "max_connections": _INT0,
        "max_backend_events_per_second": _opt_int_parser(0),
        "max_client_events_per_second": _INT0,
        "decay_seconds": _INT1,
        "terminate_on_limit": _parse_bool,
        "max_read_requests_per_second": _opt_int_parser(0),
        "max_presence_members_per_channel": _INT1,
        "max_presence_member_size_in_kb": _INT1,
        "max_channel_name_length": _INT1,
        "max_event_channels_at_once": _INT1,
        "max_event_name_length": _INT1,
        "max_event_payload_in_kb": _INT1,
        "max_event_batch_size": _INT1,
    }
)
_FEATURE_NAMES = tuple(f.name for f in fields(AppFeatures))


def _app(raw: object, where: str, base_limits: AppLimits) -> AppConfig:
    """One ``[[app_manager.array.apps]]`` entry, policy form or legacy flat form."""
    t = _table(raw, where)
    app_id = _get(t, "id", _STR, where)
    key = _get(t, "key", _STR, where)
    secret = _get(t, "secret", _STR, where)
    missing = [n for n, v in (("id", app_id), ("key", key), ("secret", secret)) if v is None]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")

    # Policy form: limits/features/channels live under `policy`; when it is present the flat
    # fields are ignored (spec 01 §9.1). Legacy flat form: everything directly on the app.
    if t.get("policy") is not None:
        policy = _table(t["policy"], f"{where}.policy")
        pw = f"{where}.policy"
        limits_t = _table(policy.get("limits"), f"{pw}.limits")
        features_t = _table(policy.get("features"), f"{pw}.features")
        channels_t = _table(policy.get("channels"), f"{pw}.channels")
        lw, fw, cw = f"{pw}.limits", f"{pw}.features", f"{pw}.channels"
        webhooks_raw = policy.get("webhooks", t.get("webhooks"))
    else:
        policy = t
        pw = lw = fw = cw = where
        limits_t = features_t = channels_t = t
        webhooks_raw = t.get("webhooks")

    limit_values = {
        name: _get(limits_t, name, parse, lw, getattr(base_limits, name))
        for name, parse in _LIMIT_PARSERS.items()
    }
    feature_values = {
        name: _get(features_t, name, _parse_bool, fw, False) for name in _FEATURE_NAMES
    }

    namespaces_raw = channels_t.get("channel_namespaces") or []
    if not isinstance(namespaces_raw, list):
        raise ConfigError(f"{cw}.channel_namespaces: expected a list of tables")
    namespaces = tuple(
        _namespace(ns, f"{cw}.channel_namespaces[{i}]") for i, ns in enumerate(namespaces_raw)
    )
    seen: set[str] = set()
    for ns in namespaces:
        if ns.name in seen:
            raise ConfigError(f"{cw}.channel_namespaces: duplicate namespace {ns.name!r}")
        seen.add(ns.name)

    webhooks_list = webhooks_raw or []
    if not isinstance(webhooks_list, list):
        raise ConfigError(f"{pw}.webhooks: expected a list of tables")
    idem = _table(policy.get("idempotency"), f"{pw}.idempotency")
    recovery = _table(policy.get("connection_recovery"), f"{pw}.connection_recovery")
    return AppConfig(
        id=app_id,
        key=key,
        secret=secret,
        enabled=_get(t, "enabled", _parse_bool, where, True),
        limits=AppLimits(**limit_values),
        features=AppFeatures(**feature_values),
        allowed_origins=_parse_origins(channels_t.get("allowed_origins"), f"{cw}.allowed_origins"),
        channel_namespaces=namespaces,
        annotations_enabled=_get(channels_t, "annotations_enabled", _parse_bool, cw),
        history=_history_policy(policy.get("history"), f"{pw}.history", with_enabled=True),
        presence_history=_presence_history_policy(
            policy.get("presence_history"), f"{pw}.presence_history"
        ),
        idempotency_enabled=_get(idem, "enabled", _parse_bool, f"{pw}.idempotency"),
        idempotency_ttl_seconds=_get(idem, "ttl_seconds", _INT1, f"{pw}.idempotency"),
        connection_recovery_enabled=_get(
            recovery, "enabled", _parse_bool, f"{pw}.connection_recovery"
        ),
        webhooks=tuple(_webhook(w, f"{pw}.webhooks[{i}]") for i, w in enumerate(webhooks_list)),
    )


def _file_apps(doc: Mapping[str, Any], where_file: str, base_limits: AppLimits) -> list[AppConfig]:
    raw = _lookup(doc, "app_manager.array.apps", where_file)
    if raw is _MISSING or raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"'app_manager.array.apps' in {where_file}: expected a list of tables")
    return [
        _app(entry, f"{where_file}: app_manager.array.apps[{i}]", base_limits)
        for i, entry in enumerate(raw)
    ]


def _dev_app() -> AppConfig:
    """The development app of spec 01 §9.4."""
    return AppConfig(
        id=DEV_APP_ID,
        key=DEV_APP_KEY,
        secret=DEV_APP_SECRET,
        limits=replace(AppLimits(), max_connections=100000, max_client_events_per_second=1000),
        features=AppFeatures(enable_client_messages=True, enable_user_authentication=True),
        allowed_origins=("*",),
    )


_ENV_APP = "SOCKUDO_DEFAULT_APP_"


def _env_app(environ: Mapping[str, str], base_limits: AppLimits) -> AppConfig:
    """The app defined by ``SOCKUDO_DEFAULT_APP_*`` (spec 01 §9.5); all three ids are required."""
    creds = {n: environ.get(f"{_ENV_APP}{n}", "") for n in ("ID", "KEY", "SECRET")}
    missing = [f"{_ENV_APP}{n}" for n, v in creds.items() if not v.strip()]
    if missing:
        # Any of the three drops the file apps; registering nothing silently would leave the
        # operator with an empty node, so a partial definition is refused instead.
        raise ConfigError(
            f"{_ENV_APP}ID, {_ENV_APP}KEY and {_ENV_APP}SECRET must be set together; "
            f"missing: {', '.join(missing)}"
        )

    def env(name: str, parse: _Parser, default: Any, *fallbacks: str) -> Any:
        for var in (f"{_ENV_APP}{name}", *fallbacks):
            raw = environ.get(var)
            if raw is not None and raw.strip():
                return parse(raw, f"{var} (environment)")
        return default

    # Upstream's env-app code defaults differ; we use the server-wide defaults so an env app and
    # a file app behave alike (spec 01 §9.5, last paragraph).
    limits = AppLimits(
        max_connections=env("MAX_CONNECTIONS", _INT0, 100),
        max_backend_events_per_second=env("MAX_BACKEND_EVENTS_PER_SECOND", _opt_int_parser(0), 100),
        max_client_events_per_second=env("MAX_CLIENT_EVENTS_PER_SECOND", _INT0, 100),
        max_read_requests_per_second=env("MAX_READ_REQUESTS_PER_SECOND", _opt_int_parser(0), 100),
        max_presence_members_per_channel=env(
            "MAX_PRESENCE_MEMBERS_PER_CHANNEL", _INT1, base_limits.max_presence_members_per_channel
        ),
        max_presence_member_size_in_kb=env(
            "MAX_PRESENCE_MEMBER_SIZE_IN_KB", _INT1, base_limits.max_presence_member_size_in_kb
        ),
        max_channel_name_length=env(
            "MAX_CHANNEL_NAME_LENGTH", _INT1, base_limits.max_channel_name_length
        ),
        max_event_name_length=env(
            "MAX_EVENT_NAME_LENGTH", _INT1, base_limits.max_event_name_length
        ),
        max_event_channels_at_once=env(
            "MAX_EVENT_CHANNELS_AT_ONCE", _INT1, base_limits.max_event_channels_at_once
        ),
        max_event_payload_in_kb=env(
            "MAX_EVENT_PAYLOAD_IN_KB", _INT1, base_limits.max_event_payload_in_kb
        ),
        max_event_batch_size=env("MAX_EVENT_BATCH_SIZE", _INT1, base_limits.max_event_batch_size),
    )
    origins = env("ALLOWED_ORIGINS", _str_list_parser, None)
    return AppConfig(
        id=creds["ID"].strip(),
        key=creds["KEY"].strip(),
        secret=creds["SECRET"].strip(),
        enabled=True,
        limits=limits,
        features=AppFeatures(
            enable_client_messages=env(
                "ENABLE_CLIENT_MESSAGES", _parse_bool, False, "SOCKUDO_ENABLE_CLIENT_MESSAGES"
            ),
            enable_user_authentication=env("ENABLE_USER_AUTHENTICATION", _parse_bool, False),
            enable_watchlist_events=env("ENABLE_WATCHLIST_EVENTS", _parse_bool, False),
        ),
        allowed_origins=_validate_origins(origins, f"{_ENV_APP}ALLOWED_ORIGINS")
        if origins
        else None,
        annotations_enabled=env("ANNOTATIONS_ENABLED", _parse_bool, False),
    )


# --------------------------------------------------------------------------------------------
# load_settings
# --------------------------------------------------------------------------------------------


_LIMITS_PREFIX = "default_app_limits."
_DEFAULT_DATA_DIR = "./data"
_DEFAULT_WRITE_TIMEOUT_MS = 5000


def _build(
    values: Mapping[str, Any],
    base_limits: AppLimits,
    apps: tuple[AppConfig, ...],
    dev_app_in_use: bool,
) -> Settings:
    top = {attr: value for attr, value in values.items() if not attr.startswith(_LIMITS_PREFIX)}
    return Settings(**top, default_app_limits=base_limits, apps=apps, dev_app_in_use=dev_app_in_use)


def _set_override(values: dict[str, Any], name: str, value: object) -> None:
    key = _KEYS_BY_ATTR.get(name)
    if key is None:
        raise ConfigError(f"unknown setting {name!r} in overrides")
    values[name] = key.parse(value, f"override {name!r}")


def load_settings(
    config_path: str | None = None,
    *,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read defaults, the config file, the environment and ``overrides`` into a ``Settings``.

    ``environ`` defaults to ``os.environ`` (tests pass a dict). ``overrides`` are command-line
    values keyed by ``Settings`` attribute (``"port"``, ``"log_backend"``, ``"data_dir"``,
    ``"history_enabled"``; server-wide app limits as ``"default_app_limits.<field>"``), parsed
    like any other source; ``None`` values are skipped so a CLI can pass unset options through.
    Raises :class:`ConfigError` on any invalid input.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    explicit: set[str] = set()

    doc: dict[str, Any] = {}
    where_file = ""
    if config_path is not None:
        doc = _read_file(config_path, env)
        where_file = os.path.basename(config_path)
        for key in _KEYS:
            for path in key.paths:
                raw = _lookup(doc, path, where_file)
                if raw is not _MISSING and raw is not None:
                    values[key.attr] = key.parse(raw, f"'{path}' in {where_file}")
                    explicit.add(key.attr)
                    break

    for key in _KEYS:
        for var in key.env:
            raw_env = env.get(var)
            # An empty variable counts as unset (`FOO=` in an env file is a common way to
            # "unset" something); the first name of a key's list that is set wins.
            if raw_env is not None and raw_env.strip():
                values[key.attr] = key.parse(raw_env, f"{var} (environment)")
                explicit.add(key.attr)
                break

    for name, value in (overrides or {}).items():
        if value is not None:
            _set_override(values, name, value)
            explicit.add(name)

    # Derived defaults are resolved after every layer so `--data-dir` moves the databases too.
    data_dir = values.get("data_dir", _DEFAULT_DATA_DIR)
    values.setdefault("embedded_log_dir", os.path.join(data_dir, "log"))
    values.setdefault("projection_dir", os.path.join(data_dir, "projection"))
    if "ack_timeout_ms" not in explicit:
        values["ack_timeout_ms"] = values.get("history_write_timeout_ms", _DEFAULT_WRITE_TIMEOUT_MS)
    if "environment" in values:
        values["environment"] = str(values["environment"]).strip().lower()
    if values.get("log_backend") == "kafka" and not values.get("kafka_bootstrap_servers"):
        raise ConfigError(
            "event log backend 'kafka' needs bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS "
            "(or SOCKUDO_KAFKA_BOOTSTRAP, or event_log.kafka.bootstrap_servers in the config file)"
        )

    base_limits = AppLimits(
        **{
            attr.partition(".")[2]: value
            for attr, value in values.items()
            if attr.startswith(_LIMITS_PREFIX)
        }
    )
    apps, dev_app_in_use = _resolve_apps(doc, where_file, config_path is not None, env, base_limits)

    settings = _build(values, base_limits, tuple(apps), dev_app_in_use)
    _refuse_dev_credentials_in_production(settings)
    if dev_app_in_use:
        _log.warning(
            "no apps configured: using the development app %r (key %r, secret %r); "
            "do not expose this node",
            DEV_APP_ID,
            DEV_APP_KEY,
            DEV_APP_SECRET,
        )
    return settings


def _resolve_apps(
    doc: Mapping[str, Any],
    where_file: str,
    have_file: bool,
    env: Mapping[str, str],
    base_limits: AppLimits,
) -> tuple[list[AppConfig], bool]:
    """Apply the app rules of spec 01 §9.4-9.5; returns the apps and whether the dev app is used."""
    apps = _file_apps(doc, where_file, base_limits) if have_file else []
    if _parse_bool(
        env.get("SOCKUDO_SKIP_INLINE_APPS") or "false", "SOCKUDO_SKIP_INLINE_APPS (environment)"
    ):
        apps = []
    creds_set = any((env.get(f"{_ENV_APP}{n}") or "").strip() for n in ("ID", "KEY", "SECRET"))
    enabled_raw = (env.get(f"{_ENV_APP}ENABLED") or "").strip()
    env_app_enabled = (
        _parse_bool(enabled_raw, f"{_ENV_APP}ENABLED (environment)") if enabled_raw else True
    )
    if not env_app_enabled:
        return [], False  # `false` drops the file apps and registers none
    if creds_set:
        return [_env_app(env, base_limits)], False
    if not have_file:
        return [_dev_app()], True
    return apps, False


def _refuse_dev_credentials_in_production(settings: Settings) -> None:
    if settings.environment != "production":
        return
    if settings.dev_app_in_use:
        raise ConfigError(
            "ENVIRONMENT=production but no apps are configured (no config file and no "
            f"{_ENV_APP}ID/_KEY/_SECRET), so only the public development app "
            f"{DEV_APP_ID!r}/{DEV_APP_KEY!r}/{DEV_APP_SECRET!r} would be registered; refusing to "
            "start on development credentials"
        )
    for app in settings.apps:
        if app.secret == DEV_APP_SECRET:
            raise ConfigError(
                f"ENVIRONMENT=production but app {app.id!r} uses the public development secret "
                f"{DEV_APP_SECRET!r}; configure real credentials (config file or "
                f"{_ENV_APP}ID/_KEY/_SECRET) before running in production"
            )
