"""Typed values the channel fold keeps: stream heads, history rows, per-offset outcomes.

Values are packed structs or compact JSON with a fixed key order, so two nodes folding the
same log write byte-identical databases (``sockudo-tools rebuild --verify`` compares them).
"""

from __future__ import annotations

import json
import json.encoder
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sockudo.fastclass import fast_constructor

HEALTHY = "healthy"
DEGRADED = "degraded"
RESET_REQUIRED = "reset_required"


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
json_str: Callable[[str], str] = json.encoder.encode_basestring
"""A JSON string literal exactly as ``_ENCODER`` writes it (``ensure_ascii=False``)."""
_esc = json_str

# ``JSONEncoder.encode`` builds a new C encoder on every call; this is the same C encoder with
# the same settings, built once (``markers=None`` only skips the circular-reference check).
_c_encode: Callable[[Any, int], list[str]] | None = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _ENCODER.default, _esc, None, ":", ",", False, False, True
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)


def dumps(obj: Any) -> bytes:
    """Compact JSON; callers build dicts in a fixed key order, so bytes are deterministic."""
    if _c_encode is None or isinstance(obj, str):
        return _ENCODER.encode(obj).encode()
    return "".join(_c_encode(obj, 0)).encode()


def presence_stream_id(seed: str, app_id: str, channel: str) -> str:
    """A presence-history generation's stream id: UUIDv5 of the record that opens it (its
    event id, or ``seed`` text when it has none), distinct from the message stream's."""
    try:
        namespace = uuid.UUID(seed)
    except ValueError:
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, seed)
    return str(uuid.uuid5(namespace, f"presence\x00{app_id}\x00{channel}"))


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
        # (``_opt`` and ``_pack_str`` written inline: this runs for every touched head.)
        at, ev_s, ev_t = (
            self.last_transition_at_ms,
            self.evicted_through_serial,
            (self.evicted_through_time_ms),
        )
        o_s, o_t, n_s, n_t = self.oldest_serial, self.oldest_ts, self.newest_serial, self.newest_ts
        reason = self.reason
        stream_id = self.stream_id.encode()
        state = self.durable_state.encode()
        return b"".join(
            (
                _HEAD_NUMS.pack(
                    self.generation,
                    self.next_h,
                    self.next_d,
                    -1 if at is None else at,
                    -1 if ev_s is None else ev_s,
                    -1 if ev_t is None else ev_t,
                    self.retained_count,
                    self.retained_bytes,
                    -1 if o_s is None else o_s,
                    -1 if o_t is None else o_t,
                    -1 if n_s is None else n_s,
                    -1 if n_t is None else n_t,
                    0,  # reserved
                ),
                _U16.pack(len(stream_id)),
                stream_id,
                _U16.pack(len(state)),
                state,
                _pack_str(reason),
            )
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


_ROW = struct.Struct(">QQQI")

HISTORY_ITEM_PREFIX = (
    '{"stream_id":%s,"serial":%d,"published_at_ms":%d,"message_id":%s,"event_name":%s,'
    '"operation_kind":"append","payload_size_bytes":%d,"message":'
)
"""An item of an HTTP history page (spec 03 §3.1) up to its ``message``, which closes it."""


def history_item_prefix(
    stream_id: str, serial: int, published_at_ms: int, message_id: str, event: str, size: int
) -> bytes:
    """The stored text of a history item before its message (JSON strings as the page has them)."""
    strings = json_str(stream_id), json_str(message_id), json_str(event)
    text = HISTORY_ITEM_PREFIX % (strings[0], serial, published_at_ms, *strings[1:], size)
    return text.encode()


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One retained history row: the stored V2 wire message and where it came from.

    Stored as ``u64 published_at_ms ‖ u64 offset ‖ u64 delivery serial ‖ u32 n ‖ item prefix
    (n bytes) ‖ message JSON`` and, when ``n > 0``, a closing ``}``: a channel message keeps
    the whole item of its HTTP history page (:func:`history_item_prefix` around the message),
    so a page is the join of its rows' stored bytes, rendered once at fold time instead of on
    every read. The JSON's byte length is the row's ``payload_size_bytes`` and what byte
    retention counts.
    """

    message_json: bytes
    published_at_ms: int
    offset: int
    delivery_serial: int = 0
    """The live V2 ``serial`` D the message was delivered with (0: not a channel message)."""
    item_prefix: bytes = b""
    """The page item's text before the message; empty for rows no HTTP page renders as stored
    (presence transitions, messages whose JSON the response encoding refuses)."""

    @property
    def size(self) -> int:
        return len(self.message_json)

    @property
    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(self.message_json)
        return msg

    def encode(self) -> bytes:
        head = _ROW.pack(
            self.published_at_ms, self.offset, self.delivery_serial, len(self.item_prefix)
        )
        if self.item_prefix:
            return head + self.item_prefix + self.message_json + b"}"
        return head + self.message_json

    @classmethod
    def decode(cls, raw: bytes) -> HistoryRow:
        ts, offset, d, n = _ROW.unpack_from(raw)
        start = _ROW.size + n
        return cls(
            message_json=bytes(raw[start : len(raw) - 1 if n else len(raw)]),
            published_at_ms=ts,
            offset=offset,
            delivery_serial=d,
            item_prefix=bytes(raw[_ROW.size : start]),
        )


_ITEM_LEN = slice(_ROW.size - 4, _ROW.size)
_NO_ITEM = bytes(4)


def stored_item(raw: bytes) -> bytes | None:
    """The HTTP history item a stored row carries whole, or ``None``."""
    if raw[_ITEM_LEN] == _NO_ITEM:
        return None
    return raw[_ROW.size :]


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
        # The bytes of ``dumps`` over a dict of the set fields in declaration order, written
        # out directly: this runs once per folded record.
        app_id, channel, message_id, stream_id = (
            self.app_id,
            self.channel,
            self.message_id,
            self.stream_id,
        )
        d, h, ts = self.delivery_serial, self.history_serial, self.published_at_ms
        if (
            type(d) is int
            and type(ts) is int
            and (h is None or type(h) is int)
            and app_id is not None
            and channel is not None
            and message_id is not None
            and stream_id is not None
            and self.duplicate_of is None
            and not self.details
        ):
            # An applied publish, the common record (``repr`` of an exact int is its JSON).
            return (
                f'{{"kind":{_esc(self.kind)},"app_id":{_esc(app_id)},"channel":{_esc(channel)}'
                f',"message_id":{_esc(message_id)},"stream_id":{_esc(stream_id)}'
                f',"delivery_serial":{d!r}'
                + ("" if h is None else f',"history_serial":{h!r}')
                + f',"published_at_ms":{ts!r}}}'
            ).encode()
        out = ['{"kind":', _esc(self.kind)]
        if self.app_id is not None:
            out += (',"app_id":', _esc(self.app_id))
        if self.channel is not None:
            out += (',"channel":', _esc(self.channel))
        if self.message_id is not None:
            out += (',"message_id":', _esc(self.message_id))
        if self.stream_id is not None:
            out += (',"stream_id":', _esc(self.stream_id))
        if self.delivery_serial is not None:
            out += (',"delivery_serial":', json_int(self.delivery_serial))
        if self.history_serial is not None:
            out += (',"history_serial":', json_int(self.history_serial))
        if self.published_at_ms is not None:
            out += (',"published_at_ms":', json_int(self.published_at_ms))
        if self.duplicate_of is not None:
            out += (',"duplicate_of":', json_int(self.duplicate_of))
        if self.details:
            out += (',"details":', dumps(self.details).decode())
        out.append("}")
        return "".join(out).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Outcome:
        return cls(**json.loads(raw))

    def as_original(self, duplicate_of: int) -> Outcome:
        """This outcome as the answer to a later duplicate of the same request."""
        return replace(self, kind=DUPLICATE, duplicate_of=duplicate_of)


def json_int(n: int) -> str:
    """An integer as JSON writes it (``bool`` is an ``int`` too, written ``true``/``false``)."""
    if n is True:
        return "true"
    if n is False:
        return "false"
    return int.__repr__(n)


new_outcome: Callable[..., Outcome] = fast_constructor(Outcome)
"""``Outcome`` from all ten fields, positionally (``details`` must be a fresh dict)."""


DATA_ENCODING = "data_encoding"
"""Member of a stored history message whose ``data`` is raw bytes (value ``"binary"``)."""
BINARY_MEMBER = ',"data_encoding":"binary"'
"""How the channel fold writes that member: last, after ``extras`` (FOLD_VERSION 5)."""


def is_binary_message(message: Mapping[str, Any]) -> bool:
    """True for a stored message whose ``data`` is the int array of raw bytes."""
    return message.get(DATA_ENCODING) == "binary"


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
    data_is_binary: bool = False
    """``data`` is the JSON int array of raw bytes (``MessagePublished.data_is_binary``)."""


new_delivery: Callable[..., Delivery] = fast_constructor(Delivery)
"""``Delivery`` from all eighteen fields, positionally."""
