"""Responses through the node's uvicorn protocol: one write per simple response, same bytes.

``CoalescingHttpProtocol`` holds each response's head until its body: these requests go over
real sockets to a real uvicorn, as the node serves, and every kind of response must arrive
whole and in order (bodies, HEAD, 204, streamed chunks, ``connection: close``, pipelining,
``Expect: 100-continue``, an application error).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from sockudo.node import http_deadline
from sockudo.node.http_writes import HeldHead
from sockudo.node.serving import Listener, serve
from tests.support.ports import free_port, wait_accepting


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if path == "/boom":
        raise RuntimeError("application error")
    if path == "/slow":
        await asyncio.sleep(0.2)
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = b"echo:" + body if body else b"hello " + path.encode()
    headers = [(b"content-length", str(len(answer)).encode())]
    if path == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def port() -> Any:
    stop = asyncio.Event()
    port = free_port()
    task = asyncio.create_task(serve("uvicorn", app, Listener("127.0.0.1", port), stop.wait))
    await wait_accepting(port)
    yield port
    stop.set()
    await asyncio.wait_for(task, 10)


async def exchange(port: int, raw: bytes, *, until: bytes, pause: bytes | None = None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if pause is not None:
            head, _, rest = raw.partition(pause)
            writer.write(head + pause)
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(rest)
        else:
            writer.write(raw)
        data = b""
        while until not in data:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        writer.close()


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def test_every_kind_of_response_arrives_whole(port: int) -> None:
    plain = await exchange(port, get("/a"), until=b"hello /a")
    assert plain.startswith(b"HTTP/1.1 200 OK\r\n")
    assert plain.endswith(b"\r\n\r\nhello /a")

    head = await exchange(port, get("/a", "HEAD"), until=b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 8\r\n" in head
    assert head.endswith(b"\r\n\r\n")

    empty = await exchange(port, get("/empty"), until=b"\r\n\r\n")
    assert empty.startswith(b"HTTP/1.1 204 No Content\r\n")

    streamed = await exchange(port, get("/stream"), until=b"0\r\n\r\n")
    assert b"transfer-encoding: chunked" in streamed
    assert streamed.endswith(b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n")

    closed = await exchange(port, get("/close"), until=b"hello /close")
    assert b"connection: close" in closed
    assert closed.endswith(b"hello /close")

    pipelined = await exchange(port, get("/1") + get("/2") + get("/3"), until=b"hello /3")
    assert [part.rsplit(b"\r\n\r\n", 1)[-1][:8] for part in pipelined.split(b"HTTP/1.1 ")[1:]] == [
        b"hello /1",
        b"hello /2",
        b"hello /3",
    ]

    body = b'{"x":1}'
    continued = await exchange(
        port,
        get("/post", "POST", f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n") + body,
        until=b"echo:",
        pause=b"\r\n\r\n",
    )
    assert continued.startswith(b"HTTP/1.1 200 OK\r\n")
    assert continued.endswith(b"echo:" + body)

    boom = await exchange(port, get("/boom"), until=b"Internal Server Error")
    assert boom.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


async def test_a_malformed_pipelined_request_is_refused_after_the_answers_before_it(
    port: int,
) -> None:
    # uvicorn alone writes the 400 at once, ahead of the answers still owed.
    answers = await exchange(port, get("/slow") + get("/2") + b"NOT HTTP\r\n\r\n", until=b"xx")
    parts = answers.split(b"HTTP/1.1 ")[1:]
    assert [p.split(b"\r\n", 1)[0] for p in parts] == [b"200 OK", b"200 OK", b"400 Bad Request"]
    assert parts[0].endswith(b"hello /slow")
    assert parts[1].endswith(b"hello /2")
    assert b"connection: close" in parts[2]
    # A malformed request with nothing owed before it is refused at once, as before.
    refused = await exchange(port, b"NOT HTTP\r\n\r\n", until=b"xx")
    assert refused.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_requests_that_do_not_arrive_in_time_are_cut_off(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_deadline, "REQUEST_TIMEOUT_S", 0.5)

    async def answer(*parts: bytes, pause: float = 0.0) -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        began = time.monotonic()
        try:
            for part in parts:
                writer.write(part)
                await asyncio.sleep(pause)
            data = await asyncio.wait_for(reader.read(-1), 10)  # until the server closes
        finally:
            writer.close()
        return data, time.monotonic() - began

    # A connection that never starts a request: closed, nothing said.
    data, took = await answer()
    assert (data, 0.4 < took < 3) == (b"", True), took
    # Half a head, or a body that stops coming: 408, then closed.
    for partial in (
        b"GET /a HTTP/1.1\r\nHost: x\r\n",
        b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{",
    ):
        data, took = await answer(partial)
        assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
        assert b"connection: close" in data
        assert 0.4 < took < 3, took
    # A body that keeps coming, however slowly, is read to its end; so are requests after it
    # on the same connection.
    head = b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n"
    slow = [head, b"a", b"b", b"c", b"d", get("/next", extra="Connection: close\r\n")]
    data, took = await answer(*slow, pause=0.3)
    assert took > 1.5
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"200 OK", b"200 OK"], data
    assert answers[0].endswith(b"echo:abcd")
    assert answers[1].endswith(b"hello /next")


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.writes.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_held_head_writes_once_per_simple_response() -> None:
    rec = Recorder()
    held = HeldHead(rec)
    held.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert rec.writes == []
    held.write(b"body")
    held.write(b"more")
    assert rec.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]
    # A head without body bytes goes out when the response ends or the connection closes.
    for finish in ("flush", "close"):
        rec = Recorder()
        held = HeldHead(rec)
        held.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        getattr(held, finish)()
        assert rec.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
        assert rec.closed is (finish == "close")
    # 100 Continue is never held; other transport calls pass through.
    rec = Recorder()
    held = HeldHead(rec)
    held.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert rec.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert held.is_closing() is False
