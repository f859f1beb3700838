"""Server CPU per WebSocket connection: the node, bare uvicorn, and a bare parser.

    python bench/ws_handshake.py [--connections 1000] [--rounds 3]

Each round opens ``--connections`` WebSockets at once from this process (asyncio streams,
masked frames with a zero key), reads each one's first frame, sends one text frame, reads the
answer, then closes them all. The server process's CPU time (user + system, ``/proc``) over the
round divided by the connections is its cost per connection; the median round is printed.
On loopback the kernel does part of the receiving side's work in the sender's context, so
these figures leave some kernel time out, the same way for every server.

Servers:

1. ``sockudo-node`` (embedded log), V2 JSON: the first frame is
   ``sockudo:connection_established``, the frame sent is ``sockudo:subscribe`` to a public
   channel, the answer ``sockudo_internal:subscription_succeeded``.
2. A bare ASGI app on uvicorn with the node's listener settings (``sockudo/node/serving.py``:
   httptools, the node's own WebSocket protocol, ``ws_protocol.py``): accept, send one frame,
   echo what it receives; the same on wsproto with the node's opening handshake
   (``fast_upgrade.py``, the node before ``ws_protocol.py``); and on stock wsproto (h11).
3. A minimal asyncio protocol: httptools parses the upgrade request, the 101 answer and one
   frame are written by hand, frames are echoed. Not a server (no validation, no close
   handshake): the floor a leaner WebSocket layer could approach.

The node's reconnect storm (``bench/recovery.py``) costs it each WebSocket handshake; this
says how much of that is the server library's and how much is the node's own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.node import APP_KEY, NodeProcess

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HELLO = b'{"event":"sockudo:connection_established","data":"{}"}'


def _text_frame(payload: bytes, *, masked: bool) -> bytes:
    n = len(payload)
    first = bytes([0x81])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = first + bytes([mask_bit | n])
    elif n < 65536:
        head = first + bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head = first + bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    return head + (b"\0\0\0\0" if masked else b"") + payload  # zero mask: payload as is


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return await reader.readexactly(n)


# --- servers under test --------------------------------------------------------------------


async def _echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": _HELLO.decode()})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})


def _serve_uvicorn(port: int, *, wsproto: bool, stock: bool) -> None:
    import uvloop

    from sockudo.node import fast_upgrade, ws_protocol
    from sockudo.node.serving import Listener, serve

    if wsproto or stock:
        ws_protocol.upgrade_from = lambda http: None  # every upgrade to the `ws` class
    if stock:
        from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

        fast_upgrade.FastUpgradeWSProtocol = WSProtocol  # type: ignore[misc]

    async def main() -> None:
        await serve(
            "uvicorn",
            _echo_app,
            Listener("127.0.0.1", port, backlog=4096),
            asyncio.Event().wait,
        )

    uvloop.run(main())


class _Minimal(asyncio.Protocol):
    """Upgrade parsed by httptools, 101 written by hand, unmasked echo of short frames."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import httptools

        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.parser = httptools.HttpRequestParser(self)
        self.key = b""
        self.open = False
        self.pending = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"sec-websocket-key":
            self.key = value

    def on_message_complete(self) -> None:
        if self.open:  # httptools may also raise HttpParserUpgrade for the same request
            return
        accept = base64.b64encode(hashlib.sha1(self.key + _GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + _text_frame(_HELLO, masked=False)
        )
        self.open = True

    def data_received(self, data: bytes) -> None:
        import httptools

        if not self.open:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self.on_message_complete()
            return
        buf = self.pending + data
        while len(buf) >= 6 and len(buf) >= 6 + (buf[1] & 0x7F):
            n = buf[1] & 0x7F
            mask, payload = buf[2:6], buf[6 : 6 + n]
            plain = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
            self.transport.write(_text_frame(plain, masked=False))
            buf = buf[6 + n :]
        self.pending = buf


def _serve_minimal(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Minimal, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    uvloop.run(main())


# --- the client ----------------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _upgrade(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def _connect(port: int, path: str, message: bytes, expect: bytes) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_upgrade(port, path))
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {head[:60]!r}")
    first = await _read_frame(reader)
    if b"connection_established" not in first:
        raise RuntimeError(f"unexpected first frame {first[:80]!r}")
    writer.write(_text_frame(message, masked=True))
    answer = await _read_frame(reader)
    if expect not in answer:
        raise RuntimeError(f"unexpected answer {answer[:80]!r}")
    return writer


async def _round(pid: int, port: int, path: str, n: int, message: bytes, expect: bytes) -> float:
    before = _cpu_s(pid)
    writers = await asyncio.gather(*(_connect(port, path, message, expect) for _ in range(n)))
    spent = _cpu_s(pid) - before
    for w in writers:
        w.close()
    await asyncio.sleep(0.5)  # let the server see the closes before the next round
    return spent / n


def _measure(pid: int, port: int, path: str, args: argparse.Namespace, kind: str) -> list[float]:
    if kind == "node":  # the node answers a subscribe; the others echo
        message = json.dumps(
            {"event": "sockudo:subscribe", "data": {"channel": "bench-handshake"}}
        ).encode()
        expect = b"subscription_succeeded"
    else:
        message, expect = b'{"event":"echo"}', b"echo"
    return [
        asyncio.run(_round(pid, port, path, args.connections, message, expect))
        for _ in range(args.rounds)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--serve",
        choices=["uvicorn", "uvicorn-wsproto", "uvicorn-stock", "minimal"],
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve in ("uvicorn", "uvicorn-wsproto", "uvicorn-stock"):
        _serve_uvicorn(
            args.port,
            wsproto=args.serve == "uvicorn-wsproto",
            stock=args.serve == "uvicorn-stock",
        )
        return
    if args.serve == "minimal":
        _serve_minimal(args.port)
        return

    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory() as d:
        node = NodeProcess(Path(d) / "node")
        node.start()
        try:
            assert node.proc is not None
            rows.append(
                (
                    "sockudo-node: V2 connect + subscribe",
                    _measure(node.proc.pid, node.port, f"/app/{APP_KEY}?protocol=2", args, "node"),
                )
            )
        finally:
            node.stop()
    for kind, label in (
        ("uvicorn", "bare ASGI app, node's uvicorn settings"),
        ("uvicorn-wsproto", "bare ASGI app, uvicorn + wsproto, handshake without h11"),
        ("uvicorn-stock", "bare ASGI app, uvicorn + stock wsproto (h11 handshake)"),
        ("minimal", "minimal protocol (httptools upgrade, hand-written frames)"),
    ):
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(port)],
            stdout=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port)
            rows.append((label, _measure(proc.pid, port, "/app/key", args, kind)))
        finally:
            proc.terminate()
            proc.wait(10)
    print(
        f"ws_handshake: {args.connections} connections at once, {args.rounds} rounds; "
        "server CPU per connection (median round, all rounds)"
    )
    width = max(len(label) for label, _ in rows)
    for label, per_conn in rows:
        rounds = ", ".join(f"{x * 1e6:.0f}" for x in per_conn)
        print(f"  {label:<{width}}  {statistics.median(per_conn) * 1e6:6.0f} µs  ({rounds})")


if __name__ == "__main__":
    main()
