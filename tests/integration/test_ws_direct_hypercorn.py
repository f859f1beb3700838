"""The ``sockudo.transport`` extension under the real Hypercorn the node runs on.

If a Hypercorn upgrade moved the internals the adapter follows, these tests fail instead of
the node silently falling back to the slow ASGI send path.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
import uvloop
import websockets
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.types import Receive, Scope, Send

from sockudo.ws.direct import transport_of, with_transport_extension
from sockudo.ws.framing import encode_frame

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def scenario(compression: str | None) -> None:
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(with_transport_extension(app), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    )
    for _ in range(100):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        await asyncio.sleep(0.05)
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


@pytest.mark.parametrize("compression", [None, "deflate"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_direct_frames_reach_a_real_client_in_order(loop: str, compression: str | None) -> None:
    # The node runs on uvloop (sockudo/node/cli.py); both loops' transports must be found.
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario(compression))
