"""Key layouts of the projection column families (spec 05 §7.1).

Integers are big-endian unsigned so byte order equals numeric order; ``CK`` is
``app ‖ 0x00 ‖ channel ‖ 0x00`` so one channel's keys are one contiguous range.
"""

from __future__ import annotations

import struct

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U32U64 = struct.Struct(">IQ")

# Column families of the projection database. ``meta`` holds checkpoints and node-local health.
META = "meta"
STREAMS = "streams"
HISTORY = "history"
OFFSETS = "offsets"
DEDUP = "dedup"
IDEM = "idem"
DELIVERY = "delivery"
"""``CK gen u64 D`` → u64 history serial of the row delivered as D (recovery replay)."""
PRESENCE = "presence"
"""Connections in presence channels: ``CK user_id 0x00 incarnation 0x00 socket_id``."""
PRESENCE_USERS = "presence_users"
"""Members (user level): ``CK user_id`` → connection count and the first connection's info."""
BY_NODE = "by_node"
"""``u32 partition ‖ incarnation 0x00 ‖ CK user_id 0x00 socket_id``: cleanup of dead nodes."""
DEAD_NODES = "dead_nodes"
"""``u32 partition ‖ incarnation``: incarnations declared dead in that partition."""
PSTREAMS = "pstreams"
"""Presence-history stream heads, one per presence channel (``CK``)."""
PRESENCE_HIST = "presence_hist"
"""Presence-history transitions: ``CK gen u64 P``."""
CACHE = "cache"
"""Last HTTP-published event of each cache channel (``CK``)."""
REVOCATIONS = "revocations"
"""Revoked capability tokens by jti and by client id, with an expiry index (folds/revocations)."""

COLUMN_FAMILIES: tuple[str, ...] = (
    META,
    STREAMS,
    HISTORY,
    OFFSETS,
    DEDUP,
    IDEM,
    DELIVERY,
    PRESENCE,
    PRESENCE_USERS,
    BY_NODE,
    DEAD_NODES,
    PSTREAMS,
    PRESENCE_HIST,
    CACHE,
    REVOCATIONS,
)
"""Every column family; ``tools rebuild --verify`` compares all of them except ``meta``."""


def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(b: bytes, at: int = 0) -> int:
    return int(_U64.unpack_from(b, at)[0])


def channel_prefix(app_id: str, channel: str) -> bytes:
    """``CK``: the prefix of every key of one channel."""
    return f"{app_id}\x00{channel}\x00".encode()  # UTF-8 keeps NUL a single 0x00 byte


def split_channel_prefix(ck: bytes) -> tuple[str, str]:
    app, channel, _ = ck.split(b"\x00", 2)
    return app.decode(), channel.decode()


def history_key(ck: bytes, generation: int, serial: int) -> bytes:
    return ck + _U32U64.pack(generation, serial)


def history_gen_prefix(ck: bytes, generation: int) -> bytes:
    return ck + _U32.pack(generation)


def offset_key(partition: int, offset: int) -> bytes:
    return _U32U64.pack(partition, offset)


def dedup_key(partition: int, event_id: str) -> bytes:
    return _U32.pack(partition) + event_id.encode()


def idem_key(app_id: str, ns: str, key: str, channel: str) -> bytes:
    return app_id.encode() + b"\x00" + f"{ns}:{key}".encode() + b"\x00" + channel.encode()


def idem_prefix(app_id: str, ns: str, key: str) -> bytes:
    return app_id.encode() + b"\x00" + f"{ns}:{key}".encode() + b"\x00"


def member_key(ck: bytes, user_id: str) -> bytes:
    return ck + user_id.encode()


def connection_key(ck: bytes, user_id: str, incarnation: str, socket_id: str) -> bytes:
    return ck + user_id.encode() + b"\x00" + incarnation.encode() + b"\x00" + socket_id.encode()


def connections_of_member_prefix(ck: bytes, user_id: str) -> bytes:
    return ck + user_id.encode() + b"\x00"


def by_node_prefix(partition: int, incarnation: str) -> bytes:
    return _U32.pack(partition) + incarnation.encode() + b"\x00"


def by_node_key(partition: int, incarnation: str, ck: bytes, user_id: str, socket_id: str) -> bytes:
    return (
        by_node_prefix(partition, incarnation)
        + ck
        + user_id.encode()
        + b"\x00"
        + socket_id.encode()
    )


def split_by_node_key(key: bytes) -> tuple[str, str, str, str]:
    """``(app_id, channel, user_id, socket_id)`` of a ``by_node`` key."""
    _incarnation, app, channel, user, socket = key[4:].split(b"\x00", 4)
    return app.decode(), channel.decode(), user.decode(), socket.decode()


def dead_node_key(partition: int, incarnation: str) -> bytes:
    return _U32.pack(partition) + incarnation.encode()


def checkpoint_key(topic: str, partition: int) -> bytes:
    return f"ckpt/{topic}/".encode() + _U32.pack(partition)


def stall_key(topic: str, partition: int) -> bytes:
    return f"stall/{topic}/".encode() + _U32.pack(partition)


def genesis_key(topic: str, partition: int) -> bytes:
    return f"genesis/{topic}/".encode() + _U32.pack(partition)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\xff" * 64
