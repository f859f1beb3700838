"""Typed values the channel fold keeps: stream heads, history rows, per-offset outcomes.

Values are compact JSON with a fixed key order, so two nodes folding the same log write
byte-identical databases (``sockudo-tools rebuild --verify`` compares them).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from typing import Any

HEALTHY = "healthy"
DEGRADED = "degraded"
RESET_REQUIRED = "reset_required"


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any) -> bytes:
    """Compact JSON; callers build dicts in a fixed key order, so bytes are deterministic."""
    return _ENCODER.encode(obj).encode()


_HEAD_FIELDS = (
    "stream_id",
    "generation",
    "next_h",
    "next_d",
    "durable_state",
    "reason",
    "last_transition_at_ms",
    "evicted_through_serial",
    "evicted_through_time_ms",
    "retained_count",
    "retained_bytes",
    "oldest_serial",
    "oldest_ts",
    "newest_serial",
    "newest_ts",
)


@dataclass(slots=True)
class StreamHead:
    """The state of one channel's current stream generation (``streams`` CF).

    Mutable on purpose: the fold updates the cached head of a channel in place for every
    record of a batch and encodes it once when the batch commits.
    """

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
        return dumps({name: getattr(self, name) for name in _HEAD_FIELDS})

    @classmethod
    def decode(cls, raw: bytes) -> StreamHead:
        return cls(**json.loads(raw))

    def copy(self) -> StreamHead:
        return replace(self)


_ROW = struct.Struct(">QQ")


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One retained history row: the stored V2 wire message and where it came from.

    Stored as ``u64 published_at_ms ‖ u64 offset ‖ message JSON``; the JSON's byte length is
    the row's ``payload_size_bytes`` and what byte retention counts.
    """

    message_json: bytes
    published_at_ms: int
    offset: int

    @property
    def size(self) -> int:
        return len(self.message_json)

    @property
    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(self.message_json)
        return msg

    def encode(self) -> bytes:
        return _ROW.pack(self.published_at_ms, self.offset) + self.message_json

    @classmethod
    def decode(cls, raw: bytes) -> HistoryRow:
        ts, offset = _ROW.unpack_from(raw)
        return cls(message_json=bytes(raw[_ROW.size :]), published_at_ms=ts, offset=offset)


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


_OUTCOME_FIELDS = (
    "app_id",
    "channel",
    "message_id",
    "stream_id",
    "delivery_serial",
    "history_serial",
    "published_at_ms",
    "duplicate_of",
)


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
        out: dict[str, Any] = {"kind": self.kind}
        for name in _OUTCOME_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.details:
            out["details"] = self.details
        return dumps(out)

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
