"""The ``sockudo.transport`` and ``sockudo.inbound`` extensions under both servers the node runs on.

Each scenario runs the real uvicorn and the real Hypercorn through ``sockudo.node.serving``, as
the node does. If an upgrade of either moved the internals the adapter follows, these tests fail
instead of the node silently falling back to the slow ASGI send path.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop
import websockets
from starlette.types import ASGIApp, Receive, Scope, Send

from sockudo.config import HttpServer
from sockudo.node.serving import Listener, serve
from sockudo.ws import direct
from sockudo.ws.direct import transport_of, watch_inbound, with_transport_extension
from sockudo.ws.framing import PING_FRAME, encode_frame
from tests.support.ports import free_port, wait_accepting

seen: list[bool] = []


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    transport = transport_of(scope)
    seen.append(transport is not None)
    if transport is not None:
        transport.write(encode_frame("direct text") + encode_frame(b"\x00direct bytes"))
    # ASGI sends after direct writes keep their order on the wire.
    await send({"type": "websocket.send", "text": "through asgi"})
    message = await receive()
    await send({"type": "websocket.send", "text": f"echo {message.get('text')}"})
    await send({"type": "websocket.close", "code": 4321, "reason": "done"})


async def start(
    server: HttpServer, asgi: ASGIApp, stop: asyncio.Event
) -> tuple[int, asyncio.Task[None]]:
    """``asgi`` behind the extensions on ``server``, as the node serves it; once it accepts."""
    port = free_port()
    listener = Listener("127.0.0.1", port, graceful_timeout_s=1.0)
    task = asyncio.create_task(serve(server, with_transport_extension(asgi), listener, stop.wait))
    await wait_accepting(port)
    return port, task


async def scenario(server: HttpServer, compression: str | None) -> None:
    stop = asyncio.Event()
    port, task = await start(server, app, stop)
    seen.clear()
    try:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/app/x", compression=compression
        ) as ws:
            received = [await ws.recv() for _ in range(3)]
            await ws.send("hi")
            received.append(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert seen == [True]
    assert received == ["direct text", b"\x00direct bytes", "through asgi", "echo hi"]
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4321


SERVERS = ["uvicorn", "hypercorn"]


@pytest.mark.parametrize("compression", [None, "deflate"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("server", SERVERS)
def test_direct_frames_reach_a_real_client_in_order(
    server: HttpServer, loop: str, compression: str | None
) -> None:
    # The node runs on uvloop (sockudo/node/cli.py); both loops' transports must be found.
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario(server, compression))


watched: list[tuple[bool, bool]] = []


async def watching_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Pings through the transport; reports what the inbound watch saw of the answers."""
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    watch = watch_inbound(scope)
    transport = transport_of(scope)
    assert watch is not None
    assert transport is not None
    assert watch_inbound(scope) is watch  # installed once
    transport.write(PING_FRAME)
    for _ in range(100):  # the client sends nothing but the Pong until told so
        if watch.last_frame > direct.NEVER:
            break
        await asyncio.sleep(0.02)
    saw_pong = watch.last_frame > direct.NEVER and watch.last_ping == direct.NEVER
    await send({"type": "websocket.send", "text": "pong seen"})
    await receive()  # "after ping": the client pinged first (the server answered it)
    watched.append((saw_pong, watch.last_ping > direct.NEVER))
    await send({"type": "websocket.close", "code": 1000})


async def watch_scenario(server: HttpServer) -> None:
    stop = asyncio.Event()
    port, task = await start(server, watching_app, stop)
    watched.clear()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/app/x", ping_interval=None) as ws:
            # websockets answers the server's Ping by itself.
            assert await asyncio.wait_for(ws.recv(), 5) == "pong seen"
            pong_waiter = await ws.ping(b"hi")
            await asyncio.wait_for(pong_waiter, 5)  # the server answers client Pings
            await ws.send("after ping")
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert watched == [(True, True)]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("server", SERVERS)
def test_inbound_watch_sees_control_frames(server: HttpServer, loop: str) -> None:
    # The native V2 heartbeat (sockudo/ws/heartbeat.py) depends on this hook into the server.
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(watch_scenario(server))


def test_no_watch_without_the_extension() -> None:
    # Another server, HTTP/2 or an in-process client: the endpoint keeps the sockudo:ping path.
    assert watch_inbound({"type": "websocket", "extensions": {}}) is None
    assert watch_inbound({"type": "websocket"}) is None
    assert watch_inbound({"type": "websocket", "extensions": {direct.INBOUND: object()}}) is None
