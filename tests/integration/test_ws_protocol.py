"""The node's WebSocket protocol against uvicorn's wsproto one, over real sockets.

``NodeWSProtocol`` (sockudo/node/ws_protocol.py) replaces uvicorn's wsproto protocol for valid
upgrades. Every scenario here runs twice on a real uvicorn as the node configures it: once as
the node serves, once with every upgrade sent to the wsproto protocol (the node's handshake,
``fast_upgrade.py``). The bytes the client receives (less the ``date`` header) and the ASGI
messages the application sees must be the same, and each scenario also checks what RFC 6455
and the ASGI spec require, so a fault shared by both cannot pass either.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from sockudo.node import http_deadline, ws_protocol
from sockudo.node.serving import Listener, serve
from tests.support.ports import free_port, wait_accepting

MAX_MESSAGE = 4096


@dataclass
class Seen:
    """What the application saw: its scopes and every ASGI message it received."""

    scopes: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def make_app(seen: Seen) -> Callable[..., Any]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        kept = {k: v for k, v in scope.items() if k not in ("client", "state")}
        seen.scopes.append(kept)
        owner = getattr(send, "__self__", None)
        seen.protocols.append(type(owner).__name__)
        path = scope["path"]
        try:
            connect = await receive()
            seen.messages.append(connect)
            if path == "/deny":
                await send(
                    {
                        "type": "websocket.http.response.start",
                        "status": 404,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
                    }
                )
                await send({"type": "websocket.http.response.body", "body": b"no"})
                return
            if path == "/reject":
                await send({"type": "websocket.close"})
                return
            if path == "/boom":
                raise RuntimeError("application failed before the accept")
            if path == "/deadlines":
                await deadlines(send)
                return
            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": "chat" if "chat" in scope["subprotocols"] else None,
                    "headers": [(b"x-extra", b"1")],
                }
            )
            while True:
                message = await receive()
                seen.messages.append(message)
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is not None and text.startswith("close:"):
                    await send({"type": "websocket.close", "code": int(text[6:]), "reason": "bye"})
                    continue
                await send(
                    {"type": "websocket.send", **{k: v for k, v in message.items() if k != "type"}}
                )
        finally:
            seen.done.set()

    return app


async def deadlines(send: Send) -> None:
    """Waits with ``receive_until`` as the endpoint does; reports each outcome as a frame."""
    protocol = send.__self__  # type: ignore[attr-defined]
    await send({"type": "websocket.accept"})
    loop = asyncio.get_running_loop()

    async def wait(seconds: float) -> str:
        began = time.monotonic()
        message = await protocol.receive_until(began + seconds)
        took = time.monotonic() - began
        got = "none" if message is None else message.get("text", message["type"])
        return f"{got}:{took:.3f}"

    results = [
        await wait(0.2),  # nothing arrives: None at the deadline
        await wait(0.3),  # the client's "a" at ~0.1 s comes first (timer left at +0.3)
        await wait(0.6),  # a later deadline: the old timer fires early and is set again
        await wait(1.0),  # "b" at ~0.1 s leaves a timer pending at +1.0 ...
        await wait(0.2),  # ... which this earlier deadline must not wait for
    ]
    loop.call_later(0.1, protocol.wake)
    results.append(await wait(5.0))  # woken
    ran: list[int] = []
    loop.call_soon(ran.append, 1)
    # A deadline already past answers None, but only after letting other work run: the
    # endpoint loops on such deadlines while its writer (another task) sends the close.
    past = await protocol.receive_until(time.monotonic() - 1)
    results.append(f"{'yielded' if ran else 'spun'}:{past}")
    await send({"type": "websocket.send", "text": " ".join(results)})
    await send({"type": "websocket.close", "code": 1000})


@dataclass
class Server:
    kind: str
    port: int
    seen: Seen
    stop: asyncio.Event


@contextlib.asynccontextmanager
async def running(kind: str) -> AsyncIterator[Server]:
    """A uvicorn as the node runs it; ``wsproto`` sends every upgrade to the wsproto protocol."""
    with pytest.MonkeyPatch.context() as patch:
        if kind == "wsproto":
            patch.setattr(ws_protocol, "upgrade_from", lambda http: None)
        seen = Seen()
        stop = asyncio.Event()
        port = free_port()
        listener = Listener("127.0.0.1", port, websocket_max_message_size=MAX_MESSAGE)
        task = asyncio.create_task(serve("uvicorn", make_app(seen), listener, stop.wait))
        await wait_accepting(port)
        try:
            yield Server(kind, port, seen, stop)
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
        expected = "NodeWSProtocol" if kind == "node" else "FastUpgradeWSProtocol"
        assert set(seen.protocols) <= {expected}, seen.protocols


Scenario = Callable[[Server], Awaitable[tuple[bytes, bytes]]]


async def both(scenario: Scenario) -> list[tuple[bytes, bytes, list[dict[str, Any]], Server]]:
    """Run ``scenario`` on each protocol; both must give the same bytes and ASGI messages."""
    results = []
    for kind in ("node", "wsproto"):
        async with running(kind) as server:
            head, rest = await scenario(server)
            await asyncio.wait_for(server.seen.done.wait(), 15)
        # Sec-WebSocket-Accept differs with each random key; date with the second.
        head = b"\r\n".join(
            line
            for line in head.split(b"\r\n")
            if not line.startswith((b"Sec-WebSocket-Accept", b"date:"))
        )
        results.append((head, rest, server.seen.messages, server))
    node, wsproto = results
    assert node[:3] == wsproto[:3]
    assert node[3].seen.protocols, "the application ran"
    return results


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    n = len(payload)
    first = bytes(((0x80 if fin else 0) | opcode,))
    bit = 0x80 if mask else 0
    if n < 126:
        head = first + bytes((bit | n,))
    elif n < 65536:
        head = first + bytes((bit | 126,)) + struct.pack("!H", n)
    else:
        head = first + bytes((bit | 127,)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close(code: int, reason: str = "") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason.encode())


def upgrade(path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


async def session(
    port: int, request: bytes, *sends: bytes, wait: float = 0.2
) -> tuple[bytes, bytes]:
    """The response head (undated) and every byte after it until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        for data in sends:
            writer.write(data)
            await asyncio.sleep(wait)
        rest = await asyncio.wait_for(reader.read(-1), 15)
        return head, rest
    finally:
        writer.close()


def frames_of(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        assert not data[1] & 0x80, "server frames are never masked"
        start = 2
        if n == 126:
            n, start = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, start = struct.unpack("!Q", data[2:10])[0], 10
        out.append((opcode, data[start : start + n]))
        data = data[start + n :]
    return out


async def test_handshake_scope_and_client_close() -> None:
    request = upgrade(
        "/echo/a%20b?x=1&y=%C3%A9",
        "Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nX-Custom: v\r\n",
    )
    results = await both(lambda server: session(server.port, request, close(1000, "done")))
    for head, rest, messages, server in results:
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"\r\nSec-WebSocket-Protocol: chat\r\n" in head
        assert b"\r\nx-extra: 1\r\n" in head
        assert frames_of(rest) == [(0x8, struct.pack("!H", 1000) + b"done")]
        assert messages == [
            {"type": "websocket.connect"},
            {"type": "websocket.disconnect", "code": 1000, "reason": "done"},
        ]
        (scope,) = server.seen.scopes
        assert scope["path"] == "/echo/a b"
        assert scope["raw_path"] == b"/echo/a%20b"
        assert scope["query_string"] == b"x=1&y=%C3%A9"
        assert scope["subprotocols"] == ["chat", "superchat"]
        assert scope["scheme"] == "ws"
        assert scope["headers"][0] == (b"host", b"127.0.0.1")
        assert (b"origin", b"http://example.com") in scope["headers"]
    node, wsproto = (result[3].seen.scopes[0] for result in results)
    assert {**node, "server": None} == {**wsproto, "server": None}  # ports differ


async def test_messages_fragments_and_pings() -> None:
    big = bytes(range(256)) * (MAX_MESSAGE // 256)  # a 2-byte length, exactly the limit
    sends = (
        frame(0x1, "héllo".encode())
        + frame(0x2, b"\x00" * 300)
        + frame(0x1, b"ab", fin=False)
        + frame(0x9, b"ping-1")
        + frame(0x0, "cé".encode()[:2], fin=False)
        + frame(0x0, "cé".encode()[2:] + b"d")
        + frame(0x2, big)
        + frame(0xA, b"unsolicited"),
        close(1001),
    )
    results = await both(lambda server: session(server.port, upgrade("/echo"), *sends))
    for _head, rest, messages, _server in results:
        assert frames_of(rest) == [
            (0xA, b"ping-1"),  # the pong goes out as the ping is read
            (0x1, "héllo".encode()),
            (0x2, b"\x00" * 300),
            (0x1, "abcéd".encode()),
            (0x2, big),
            (0x8, struct.pack("!H", 1001)),
        ]
        assert [m.get("text", m.get("bytes")) for m in messages[1:-1]] == [
            "héllo",
            b"\x00" * 300,
            "abcéd",
            big,
        ]
        assert messages[-1] == {"type": "websocket.disconnect", "code": 1001, "reason": ""}


async def test_an_upgraded_socket_has_no_request_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # The HTTP protocol's deadline on reading a request (http_deadline.py) ends with the
    # upgrade: a quiet WebSocket is the heartbeats' business, on either protocol.
    monkeypatch.setattr(http_deadline, "REQUEST_TIMEOUT_S", 0.3)
    results = await both(
        lambda server: session(
            server.port, upgrade("/echo"), b"", frame(0x1, b"late"), close(1000), wait=0.6
        )
    )
    for _head, rest, _messages, _server in results:
        assert frames_of(rest) == [(0x1, b"late"), (0x8, struct.pack("!H", 1000))]


async def test_server_close_and_its_answer() -> None:
    results = await both(
        lambda server: session(
            server.port, upgrade("/echo"), frame(0x1, b"close:4001"), close(4001, "bye")
        )
    )
    for _head, rest, messages, _server in results:
        assert frames_of(rest) == [(0x8, struct.pack("!H", 4001) + b"bye")]
        assert messages[-1] == {"type": "websocket.disconnect", "code": 4001, "reason": "bye"}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(0x1, b"plain", mask=False), 1002),
        (frame(0x3, b""), 1002),
        (frame(0x9, b"x", fin=False), 1002),
        (frame(0x0, b"stray"), 1002),
        (close(999), 1002),
        (close(1005), 1002),
        (frame(0x1, b"\xff\xfe"), 1007),
    ],
)
async def test_protocol_faults_close_the_socket(data: bytes, code: int) -> None:
    results = await both(lambda server: session(server.port, upgrade("/echo"), data))
    for _head, rest, messages, _server in results:
        assert rest == b""  # uvicorn answers a fault by closing, without a close frame
        assert messages[-1]["type"] == "websocket.disconnect"
        assert messages[-1]["code"] == code


async def test_oversize_message_is_1009() -> None:
    too_big = frame(0x1, b"x" * (MAX_MESSAGE + 1))
    results = await both(lambda server: session(server.port, upgrade("/echo"), too_big))
    reason = f"Message exceeds the maximum size ({MAX_MESSAGE} bytes)".encode()
    for _head, rest, messages, _server in results:
        assert frames_of(rest) == [(0x8, struct.pack("!H", 1009) + reason)]
        assert messages[-1]["code"] == 1009


@pytest.mark.parametrize(
    ("path", "status"), [("/deny", b"404"), ("/reject", b"403"), ("/boom", b"500")]
)
async def test_refusals_are_wsproto_bytes(path: str, status: bytes) -> None:
    async def refused(server: Server) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade(path))
        answer = await asyncio.wait_for(reader.read(-1), 15)
        writer.close()
        return answer, b""

    for head, _rest, _messages, _server in await both(refused):
        assert head.startswith(b"HTTP/1.1 " + status)


async def test_shutdown_closes_open_sockets_with_1012() -> None:
    async def shut(server: Server) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade("/echo"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        server.stop.set()
        rest = await asyncio.wait_for(reader.read(-1), 15)
        writer.close()
        return head, rest

    for _head, rest, messages, _server in await both(shut):
        assert frames_of(rest) == [(0x8, struct.pack("!H", 1012))]
        assert messages[-1] == {"type": "websocket.disconnect", "code": 1012}


async def test_receive_until_deadlines_and_wake() -> None:
    async with running("node") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade("/deadlines"))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await asyncio.sleep(0.3)
        writer.write(frame(0x1, b"a"))
        await asyncio.sleep(0.7)
        writer.write(frame(0x1, b"b"))
        rest = await asyncio.wait_for(reader.read(-1), 15)
        writer.close()
        await asyncio.wait_for(server.seen.done.wait(), 15)
    (text, _close) = frames_of(rest)
    outcomes = [part.split(":") for part in text[1].decode().split()]
    assert outcomes[-1] == ["yielded", "None"]
    outcomes = outcomes[:-1]
    assert [got for got, _ in outcomes] == ["none", "a", "none", "b", "none", "none"]
    took = [float(t) for _, t in outcomes]
    assert 0.19 <= took[0] < 0.5
    assert took[1] < 0.3
    assert 0.59 <= took[2] < 0.95
    assert took[3] < 1.0
    assert 0.19 <= took[4] < 0.6
    assert 0.09 <= took[5] < 1.0


async def test_oversize_message_while_closing_ends_the_closing_handshake() -> None:
    """After the server's close, the client's oversize message and then its close: the socket
    still closes at once, not when the 10 s close timer runs out."""
    too_big = frame(0x1, b"x" * (MAX_MESSAGE + 1))

    async def timed(server: Server) -> tuple[bytes, bytes]:
        began = time.monotonic()
        head, rest = await session(
            server.port, upgrade("/echo"), frame(0x1, b"close:4001"), too_big, close(4001)
        )
        took = time.monotonic() - began
        assert took < 3, f"{server.kind}: closed after {took:.1f} s"
        return head, rest

    for _head, rest, messages, _server in await both(timed):
        assert frames_of(rest) == [(0x8, struct.pack("!H", 4001) + b"bye")]
        assert messages[-1] == {"type": "websocket.disconnect", "code": 4001, "reason": "bye"}
