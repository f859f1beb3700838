"""A hand-written RFC 6455 client over a raw socket: every frame with its opcode, nothing automatic.

WebSocket libraries answer Pings by themselves and hide Pongs; heartbeat tests need to see the
server's control frames and choose whether to answer them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct

from tests.support.node import APP_KEY, NodeProcess

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class RawWebSocket:
    """One client connection; :meth:`read_frame` returns ``(opcode, payload)`` of each frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, node: NodeProcess, query: str = "protocol=2&format=json", key: str = APP_KEY
    ) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        nonce = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /app/{key}?{query} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{node.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = head.split(b"\r\n", 1)[0]
        assert b" 101 " in status, head
        return cls(reader, writer)

    async def read_frame(self, wait: float = 10.0) -> tuple[int, bytes]:
        """The next frame (server frames are unmasked and, here, never fragmented)."""
        return await asyncio.wait_for(self._read_frame(), wait)

    async def _read_frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        assert first & 0x80, "fragmented frames are not expected from the server"
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(size)

    def send_frame(self, opcode: int, payload: bytes = b"") -> None:
        """A final frame, masked as every client frame must be."""
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    def send_text(self, text: str) -> None:
        self.send_frame(TEXT, text.encode())

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def close_code(payload: bytes) -> int:
    """The status code of a Close frame's payload (1005: none given)."""
    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
