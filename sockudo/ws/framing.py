"""RFC 6455 server frames as bytes, so one encoded frame can be written to many sockets.

Server-to-client frames are never masked, so the bytes of a data frame depend only on its
payload: fanout encodes a message once and writes the same ``bytes`` to every subscriber's
transport (DESIGN.md: serialise once per message, protocol and format).
"""

from __future__ import annotations

import struct
from typing import Protocol, runtime_checkable

TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA
FIN = 0x80

PING_FRAME = bytes((FIN | PING, 0))
"""The server's heartbeat ping (spec 02 §10.1): no payload, since any inbound frame answers it."""


@runtime_checkable
class Transport(Protocol):
    """What direct writes need of a socket's transport (asyncio's or uvloop's)."""

    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...


def encode_frame(frame: str | bytes) -> bytes:
    """A final, unmasked text frame for ``str`` and binary frame for ``bytes``."""
    if isinstance(frame, str):
        payload = frame.encode()
        first = FIN | TEXT
    else:
        payload = frame
        first = FIN | BINARY
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


def payload_length(wire: bytes) -> int:
    """Payload bytes of a frame :func:`encode_frame` built (metrics count payloads)."""
    marker = wire[1]
    return len(wire) - (2 if marker < 126 else 4 if marker == 126 else 10)


NO_STATUS = 1005
"""The close code of a close frame without one (RFC 6455 §7.1.5)."""
LOCAL_ONLY_CLOSE_CODES = frozenset({1005, 1006, 1015})
"""Close codes no peer may send (RFC 6455 §7.4.1): a server writes 1000 instead, as wsproto
does, and a client's is a protocol fault."""


def control_frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked control frame (``payload`` of at most 125 bytes)."""
    return bytes((FIN | opcode, len(payload))) + payload


def close_frame(code: int | None, reason: str = "") -> bytes:
    """The server's close frame: no payload for ``None`` or 1005, else the code and the reason
    cut to fit 125 bytes at a character boundary."""
    if code is None or code == NO_STATUS:
        return control_frame(CLOSE, b"")
    if code in LOCAL_ONLY_CLOSE_CODES:
        code = 1000
    data = reason.encode("utf-8")
    if len(data) > 123:
        data = data[:123].decode("utf-8", errors="ignore").encode("utf-8")
    return control_frame(CLOSE, code.to_bytes(2, "big") + data)
