"""Typed values the channel fold keeps: stream heads, history rows and per-offset outcomes.

Values are stored as compact, key-sorted JSON so that two nodes folding the same log write
byte-identical databases (``sockudo-tools rebuild --verify`` compares them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

HEALTHY = "healthy"
DEGRADED = "degraded"
RESET_REQUIRED = "reset_required"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class StreamHead:
    """The state of one channel's current stream generation (``streams`` CF)."""

    stream_id: str
    generation: int
    next_h: int = 1
    """History serial the next persisted message gets."""
    next_d: int = 1
    """Delivery serial (the live V2 ``serial``) the next message gets."""
    durable_state: str = HEALTHY
    reason: str | None = None
    last_transition_at_ms: int | None = None
    evicted_through_serial: int | None = None
    evicted_through_time_ms: int | None = None
    retained_count: int = 0
    retained_bytes: int = 0
    oldest_serial: int | None = None
    oldest_ts: int | None = None
    newest_serial: int | None = None
    newest_ts: int | None = None

    def encode(self) -> bytes:
        return dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> StreamHead:
        return cls(**json.loads(raw))

    def with_(self, **changes: Any) -> StreamHead:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One retained history row: the stored V2 wire message and where it came from."""

    message: dict[str, Any]
    published_at_ms: int
    offset: int
    size: int
    """Byte length of the compact JSON of ``message`` (``payload_size_bytes``)."""

    def encode(self) -> bytes:
        return dumps({"m": self.message, "t": self.published_at_ms, "o": self.offset, "s": self.size})

    @classmethod
    def decode(cls, raw: bytes) -> HistoryRow:
        d = json.loads(raw)
        return cls(message=d["m"], published_at_ms=d["t"], offset=d["o"], size=d["s"])


# Outcome kinds: what folding one record meant.
APPLIED = "applied"
EPHEMERAL = "ephemeral"
DUPLICATE = "duplicate"
CONFLICT = "conflict"
RESET = "reset"
PURGED = "purged"
STATE_MARKED = "state_marked"
REBASED = "rebased"
GENESIS = "genesis"
IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the fold made of one record; publish handlers answer from it (``offsets`` CF)."""

    kind: str
    app_id: str | None = None
    channel: str | None = None
    message_id: str | None = None
    stream_id: str | None = None
    delivery_serial: int | None = None
    history_serial: int | None = None
    published_at_ms: int | None = None
    duplicate_of: int | None = None
    """Offset of the original record when ``kind`` is ``duplicate``."""
    details: dict[str, Any] = field(default_factory=dict)
    """Kind-specific facts (previous stream id, purged counts, ...)."""

    def encode(self) -> bytes:
        return dumps({k: v for k, v in asdict(self).items() if v is not None and v != {}})

    @classmethod
    def decode(cls, raw: bytes) -> Outcome:
        return cls(**json.loads(raw))

    def as_original(self, duplicate_of: int) -> Outcome:
        """This outcome as the answer to a later duplicate of the same request."""
        return replace(self, kind=DUPLICATE, duplicate_of=duplicate_of)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message to fan out to local sockets once its batch is committed."""

    app_id: str
    channel: str
    event: str
    data: str
    data_is_json: bool
    message_id: str
    stream_id: str | None
    serial: int | None
    """Delivery serial D (``None`` for ephemeral messages)."""
    history_serial: int | None
    published_at_ms: int
    exclude_socket_id: str | None
    user_id: str | None
    client_event: bool
    extras_json: str | None
    tags: dict[str, str] | None
