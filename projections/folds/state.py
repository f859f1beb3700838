"""Typed values the channel fold keeps: stream heads, history rows, per-offset outcomes.

Values are packed structs or compact JSON with a fixed key order, so two nodes folding the
same log write byte-identical databases (``sockudo-tools rebuild --verify`` compares them).
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


# StreamHead layout: u32 generation, then 12 i64 numbers (-1 = None), then the three strings
# (stream_id, durable_state, reason) each as u16 length + UTF-8 (0xFFFF = None).
_HEAD_NUMS = struct.Struct(">I12q")
_U16 = struct.Struct(">H")
_NONE16 = 0xFFFF


def _opt(n: int | None) -> int:
    return -1 if n is None else n


def _unopt(n: int) -> int | None:
    return None if n < 0 else n


def _pack_str(s: str | None) -> bytes:
    if s is None:
        return _U16.pack(_NONE16)
    b = s.encode()
    return _U16.pack(len(b)) + b


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
        # Packed, not JSON: heads are rewritten on every batch that touches the channel.
        return (
            _HEAD_NUMS.pack(
                self.generation,
                self.next_h,
                self.next_d,
                _opt(self.last_transition_at_ms),
                _opt(self.evicted_through_serial),
                _opt(self.evicted_through_time_ms),
                self.retained_count,
                self.retained_bytes,
                _opt(self.oldest_serial),
                _opt(self.oldest_ts),
                _opt(self.newest_serial),
                _opt(self.newest_ts),
                0,  # reserved
            )
            + _pack_str(self.stream_id)
            + _pack_str(self.durable_state)
            + _pack_str(self.reason)
        )

    @classmethod
    def decode(cls, raw: bytes) -> StreamHead:
        (gen, next_h, next_d, at, ev_s, ev_t, count, size, o_s, o_t, n_s, n_t, _r) = (
            _HEAD_NUMS.unpack_from(raw)
        )
        pos = _HEAD_NUMS.size
        strings: list[str | None] = []
        for _ in range(3):
            (n,) = _U16.unpack_from(raw, pos)
            pos += 2
            if n == _NONE16:
                strings.append(None)
            else:
                strings.append(bytes(raw[pos : pos + n]).decode())
                pos += n
        stream_id, state, reason = strings
        return cls(
            stream_id=stream_id or "",
            generation=gen,
            next_h=next_h,
            next_d=next_d,
            durable_state=state or HEALTHY,
            reason=reason,
            last_transition_at_ms=_unopt(at),
            evicted_through_serial=_unopt(ev_s),
            evicted_through_time_ms=_unopt(ev_t),
            retained_count=count,
            retained_bytes=size,
            oldest_serial=_unopt(o_s),
            oldest_ts=_unopt(o_t),
            newest_serial=_unopt(n_s),
            newest_ts=_unopt(n_t),
        )

    def copy(self) -> StreamHead:
        return replace(self)


_ROW = struct.Struct(">QQQ")


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One retained history row: the stored V2 wire message and where it came from.

    Stored as ``u64 published_at_ms ‖ u64 offset ‖ u64 delivery serial ‖ message JSON``; the
    JSON's byte length is the row's ``payload_size_bytes`` and what byte retention counts.
    """

    message_json: bytes
    published_at_ms: int
    offset: int
    delivery_serial: int = 0
    """The live V2 ``serial`` D the message was delivered with (0: not a channel message)."""

    @property
    def size(self) -> int:
        return len(self.message_json)

    @property
    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(self.message_json)
        return msg

    def encode(self) -> bytes:
        return (
            _ROW.pack(self.published_at_ms, self.offset, self.delivery_serial) + self.message_json
        )

    @classmethod
    def decode(cls, raw: bytes) -> HistoryRow:
        ts, offset, d = _ROW.unpack_from(raw)
        return cls(
            message_json=bytes(raw[_ROW.size :]),
            published_at_ms=ts,
            offset=offset,
            delivery_serial=d,
        )


CACHE_TTL_MS = 3_600_000
"""How long a cache channel's last event is served after it was published (spec 01 §3.9)."""


@dataclass(frozen=True, slots=True)
class CachedEvent:
    """The last HTTP publish of a cache channel (``cache`` CF)."""

    event: str
    data: str
    published_at_ms: int

    def encode(self) -> bytes:
        return dumps([self.event, self.data, self.published_at_ms])

    @classmethod
    def decode(cls, raw: bytes) -> CachedEvent:
        event, data, ts = json.loads(raw)
        return cls(event, data, ts)

    def ttl_s(self, now_ms: int) -> int:
        """Seconds it is still served; 0 or less means expired."""
        # Rounded up: an event is served for the whole hour, reporting 1 s in its last second.
        return -((now_ms - self.published_at_ms - CACHE_TTL_MS) // 1000)


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
JOINED = "presence_joined"
LEFT = "presence_left"
UPDATED = "presence_updated"
PRESENCE_RESET = "presence_reset"
NODE_DEAD = "node_dead"
TERMINATED = "terminated"

# Delivery kinds: what fanout does with a delivery.
MESSAGE = "message"
"""A channel message (HTTP publish or client event)."""
MEMBER_ADDED = "member_added"
MEMBER_REMOVED = "member_removed"
MEMBER_UPDATED = "member_updated"
"""User-level presence edges; ``data`` is the frame's data string."""
CLOSE_USER = "close_user"
"""Close every socket of ``user_id``; ``data`` is ``"terminate"`` or ``"reconnect"``."""


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
        if self.app_id is not None:
            out["app_id"] = self.app_id
        if self.channel is not None:
            out["channel"] = self.channel
        if self.message_id is not None:
            out["message_id"] = self.message_id
        if self.stream_id is not None:
            out["stream_id"] = self.stream_id
        if self.delivery_serial is not None:
            out["delivery_serial"] = self.delivery_serial
        if self.history_serial is not None:
            out["history_serial"] = self.history_serial
        if self.published_at_ms is not None:
            out["published_at_ms"] = self.published_at_ms
        if self.duplicate_of is not None:
            out["duplicate_of"] = self.duplicate_of
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
    kind: str = MESSAGE
