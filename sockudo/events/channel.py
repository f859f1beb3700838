"""Events of the ``channel-events`` topic: publishes, stream control and partition markers.

Every event is immutable and carries everything its fold needs (ids, flags, retention policy):
the fold never reads the clock, configuration or randomness (spec 05 §6.1). Times are the
record's log-append time, supplied by the log, not by the event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Origin:
    """Who appended the event."""

    node: str
    """Incarnation of the appending node."""
    socket_id: str | None = None
    """Publishing socket (client events) or the HTTP ``socket_id`` to exclude from fanout."""
    user_id: str | None = None
    """Authenticated user of the publishing socket (client events)."""
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Flags:
    """Policy decided by the appending node and obeyed by the fold (spec 05 §6.1 rule 4)."""

    persist: bool = True
    """Keep a history row (history enabled for the channel)."""
    versioned: bool = False
    ephemeral: bool = False
    """No serial, no row: live delivery only."""
    presence_history: bool = True


@dataclass(frozen=True, slots=True)
class Retention:
    """History retention in force when the event was appended; ``None`` means unlimited."""

    window_s: int | None = None
    max_count: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An idempotency key travelling with a publish; the channel fold decides (spec 05 §6.6)."""

    ns: str
    """``e`` event key, ``b`` batch key, ``m`` message-level key."""
    key: str
    fingerprint: str
    """Hex digest of name, data, channels, extras and tags."""
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class MessagePublished:
    """A message was published to a channel (HTTP ``/events``, ``/batch_events``, client events)."""

    TYPE: ClassVar[str] = "channel.publish"

    event_id: str
    """UUID unique per logical append, reused on retries (event-level dedupe)."""
    app_id: str
    channel: str
    origin: Origin
    message_id: str
    name: str
    data: str
    """The payload: the published string, or compact JSON text when ``data_is_json``."""
    data_is_json: bool = False
    """True when the publisher sent a non-string JSON value (``data`` holds its JSON text)."""
    extras_json: str | None = None
    """V2 ``extras`` object as JSON text (headers, echo, ...), publisher ``sockudo_*`` stripped."""
    tags: dict[str, str] | None = None
    flags: Flags = field(default_factory=Flags)
    retention: Retention = field(default_factory=Retention)
    idempotency: IdempotencyClaim | None = None
    client_event: bool = False
    """True for ``client-`` events sent over a WebSocket."""
    data_is_binary: bool = False
    """True when the publisher sent raw bytes (msgpack/protobuf client events, schema v3).

    ``data`` then holds the bytes as a compact JSON array of integers 0-255 (with
    ``data_is_json``): lossless, and exactly what JSON and V1 receivers get (spec 02 §2.4);
    binary wire formats turn it back into bytes."""


@dataclass(frozen=True, slots=True)
class HistoryReset:
    """An operator reset the channel's stream: a new generation starts (spec 03 §3.3)."""

    TYPE: ClassVar[str] = "stream.reset"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    new_stream_id: str
    reason: str
    requested_by: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryPurged:
    """Retained history rows were removed without changing the generation (spec 03 §3.4)."""

    TYPE: ClassVar[str] = "stream.purge"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    mode: str
    """``all``, ``before_serial`` or ``before_time_ms``."""
    before_serial: int | None = None
    before_time_ms: int | None = None
    reason: str = ""
    requested_by: str | None = None


@dataclass(frozen=True, slots=True)
class StreamStateMarked:
    """An operator marked a stream degraded / reset_required / healthy (``sockudo-tools``)."""

    TYPE: ClassVar[str] = "stream.state"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    durable_state: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PartitionRebased:
    """Every channel of the partition starts a new generation (recovery after truncation)."""

    TYPE: ClassVar[str] = "partition.rebase"

    event_id: str
    origin: Origin
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PartitionGenesis:
    """First record of a partition; a different genesis later means the log was recreated."""

    TYPE: ClassVar[str] = "partition.genesis"

    event_id: str
    origin: Origin


ChannelEvent = (
    MessagePublished
    | HistoryReset
    | HistoryPurged
    | StreamStateMarked
    | PartitionRebased
    | PartitionGenesis
)
