"""RFC 6455 client frames, read into whole messages and control frames (the server side).

The node's own WebSocket protocol (``sockudo/node/ws_protocol.py``) reads client frames with
this instead of wsproto: one pass over the bytes per read, whole messages out, no event objects
or generators per frame. It judges frames as wsproto 1.3 does (same close codes for the same
faults) so swapping one for the other changes no outcome a client can see;
``tests/unit/test_ws_reader.py`` feeds both the same bytes, in every chunking, and compares.

Faults (all end the reading; nothing after them is read):

- protocol errors (reserved bits or opcodes, an unmasked frame, a fragmented or oversize
  control frame, a non-minimal length, a stray or missing continuation, a bad close payload)
  → ``FAIL`` 1002;
- a text message or close reason that is not UTF-8 → ``FAIL`` 1007;
- a message longer than ``max_message`` bytes → ``TOO_BIG`` (uvicorn's 1009 close).
"""

from __future__ import annotations

import codecs
from typing import Any

from sockudo.ws.framing import BINARY, CLOSE, LOCAL_ONLY_CLOSE_CODES, NO_STATUS, PING, PONG, TEXT

__all__ = [
    "BINARY",
    "CLOSE",
    "FAIL",
    "PING",
    "PONG",
    "TEXT",
    "TOO_BIG",
    "FrameReader",
    "close_payload",
    "unmask",
]

# Event kinds: the opcodes of what was read, and two faults.
FAIL = -1
"""``(FAIL, code, reason)``: a protocol fault; the connection must end with ``code``."""
TOO_BIG = -2
"""``(TOO_BIG, max_message, "")``: a message grew past the limit."""

_KNOWN_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013})
"""Codes of 1000-2999 a peer may send (wsproto's ``CloseReason`` minus local-only ones)."""

Event = tuple[int, object, str] | tuple[int, object]


def unmask(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask`` (one big-integer XOR: C speed)."""
    n = len(payload)
    if not n or mask == b"\0\0\0\0":
        return payload
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def close_payload(payload: bytes) -> Event:
    """``(CLOSE, code, reason)`` of a received close frame's payload, or its fault."""
    if not payload:
        return (CLOSE, NO_STATUS, "")
    if len(payload) == 1:
        return (FAIL, 1002, "CLOSE with 1 byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code < 1000 or code > 4999:
        return (FAIL, 1002, "CLOSE with invalid code")
    if code in LOCAL_ONLY_CLOSE_CODES:
        return (FAIL, 1002, "remote CLOSE with local-only reason")
    if code <= 2999 and code not in _KNOWN_CLOSE_CODES:
        return (FAIL, 1002, "CLOSE with unknown reserved code")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        return (FAIL, 1007, f"Error decoding CLOSE reason: {exc}")
    return (CLOSE, code, reason)


class FrameReader:
    """Bytes in, events out: ``(TEXT, str)``, ``(BINARY, bytes)``, ``(PING, payload)``,
    ``(PONG, payload)``, ``(CLOSE, code, reason)``, or a final ``FAIL`` / ``TOO_BIG``.

    After ``CLOSE``, ``FAIL`` or ``TOO_BIG`` the reader is done: later bytes are ignored.
    """

    __slots__ = ("_buf", "_opcode", "_parts", "_size", "_text", "done", "max_message")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = b""
        self._opcode = 0
        """Opcode of the fragmented message in progress, 0 between messages."""
        self._parts: list[Any] = []
        """The fragments so far: decoded ``str`` for text, ``bytes`` for binary."""
        self._text: codecs.IncrementalDecoder | None = None
        """The UTF-8 decoder of a fragmented text message in progress."""
        self._size = 0
        self.done = False

    def feed(self, data: bytes) -> list[Event]:
        """Every event the bytes received so far complete, in order."""
        if self.done:
            return []
        buf = self._buf + data if self._buf else data
        out: list[Event] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            length = b1 & 0x7F
            if opcode > 2 and opcode not in (CLOSE, PING, PONG):
                return self._fail(out, 1002, f"Invalid opcode {opcode:#x}")
            control = opcode >= CLOSE
            if control and not fin:
                return self._fail(out, 1002, "Invalid attempt to fragment control frame")
            if control and length > 125:
                return self._fail(out, 1002, "Control frame with payload len > 125")
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                if length <= 125:
                    return self._fail(
                        out, 1002, "Payload length used 2 bytes when 1 would have sufficed"
                    )
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                if length <= 0xFFFF:
                    return self._fail(
                        out, 1002, "Payload length used 8 bytes when 2 would have sufficed"
                    )
                if length >> 63:
                    return self._fail(out, 1002, "8-byte payload length with non-zero MSB")
                head = 10
            if b0 & 0x70:
                return self._fail(out, 1002, "Reserved bit set unexpectedly")
            if not b1 & 0x80:
                return self._fail(out, 1002, "server received unexpected unmasked frame")
            if not control:
                # Judged as soon as the header is in, as wsproto does (it streams payloads).
                if opcode == 0:
                    if not self._opcode:
                        return self._fail(out, 1002, "unexpected CONTINUATION")
                elif self._opcode:
                    return self._fail(out, 1002, f"expected CONTINUATION, got {opcode!r}")
                if self._size + length > self.max_message:
                    self.done = True
                    self._buf = b""
                    out.append((TOO_BIG, self.max_message, ""))
                    return out
            start = pos + head + 4
            stop = start + length
            if stop > end:
                break
            payload = unmask(buf[start:stop], buf[pos + head : start])
            pos = stop
            if control:
                if opcode == CLOSE:
                    out.append(close_payload(payload))
                    self.done = True
                    self._buf = b""
                    return out
                out.append((opcode, payload))
                continue
            if fin and not self._opcode:
                if opcode == TEXT:
                    try:
                        out.append((TEXT, payload.decode("utf-8")))
                    except UnicodeDecodeError as exc:
                        return self._fail(out, 1007, str(exc))
                else:
                    out.append((BINARY, payload))
                continue
            if not self._opcode:
                self._opcode = opcode
                self._text = codecs.getincrementaldecoder("utf-8")() if opcode == TEXT else None
            self._size += length
            text = self._text
            if text is not None:
                # Decoded frame by frame, as wsproto does: a bad sequence fails at its frame.
                try:
                    self._parts.append(text.decode(payload, bool(fin)))
                except UnicodeDecodeError as exc:
                    return self._fail(out, 1007, str(exc))
            else:
                self._parts.append(payload)
            if not fin:
                continue
            parts = self._parts
            if self._opcode == TEXT:
                out.append((TEXT, "".join(parts)))
            else:
                out.append((BINARY, b"".join(parts)))
            self._opcode = 0
            self._text = None
            self._parts = []
            self._size = 0
        self._buf = buf[pos:] if pos < end else b""
        return out

    def _fail(self, out: list[Event], code: int, reason: str) -> list[Event]:
        self.done = True
        self._buf = b""
        out.append((FAIL, code, reason))
        return out
