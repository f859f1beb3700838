"""Heartbeats on a real node (spec 02 §10, spec 01 §3.2), seen frame by frame from a raw socket.

The node runs with short timings: ``activity_timeout`` 2 s and ``websocket.ping_interval`` 1 s,
so V2 sockets get a WebSocket Ping every max(1, 2 / 2) = 1 s, and ``websocket.pong_timeout``
2 s. V2 sockets get the native heartbeat (opcode 0x9 pings, any inbound frame answers, 4201
otherwise); V1 sockets keep ``pusher:ping``; a node with ``websocket.auto_ping = false`` keeps
V2 on the ``sockudo:ping`` fallback. The real sockudo-python client (its ``websockets`` library
answers Pings by itself) stays connected on its own. Under uvicorn and under Hypercorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sockudo_python import ConnectionState  # type: ignore[import-untyped]

from tests.support.node import NodeProcess, running_node
from tests.support.raw_ws import CLOSE, PING, PONG, TEXT, RawWebSocket, close_code
from tests.support.sockudo_client import sockudo_client

pytestmark = pytest.mark.filterwarnings(
    # sockudo-python 2.2.0 reads deprecated ConnectionClosed attributes (see its conformance suite).
    "ignore:ConnectionClosed.code is deprecated:DeprecationWarning",
    "ignore:ConnectionClosed.reason is deprecated:DeprecationWarning",
)

ACTIVITY_TIMEOUT = 2
PING_INTERVAL = 1.0  # max(websocket.ping_interval 1, activity_timeout / 2)
PONG_TIMEOUT = 2
TIMINGS = {
    "ACTIVITY_TIMEOUT": str(ACTIVITY_TIMEOUT),
    "WEBSOCKET_PING_INTERVAL": "1",
    "WEBSOCKET_PONG_TIMEOUT": str(PONG_TIMEOUT),
}
OBSERVE = PING_INTERVAL + PONG_TIMEOUT + 2.0
"""Long enough that an unanswered ping would have closed the socket."""
SLACK = 2.5
"""Scheduling allowance on top of a deadline (2 shared cores)."""


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn"])
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    # The inbound watch follows each server's internals (sockudo/ws/direct.py): test both.
    data = Path(tmp_path_factory.mktemp(f"heartbeat-{request.param}")) / "node"
    env = {**TIMINGS, "SOCKUDO_HTTP_SERVER": request.param}
    with running_node(NodeProcess(data, extra_env=env)) as n:
        yield n


@pytest.fixture(scope="module")
def fallback_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data = Path(tmp_path_factory.mktemp("heartbeat-fallback")) / "node"
    env = {**TIMINGS, "WEBSOCKET_AUTO_PING": "false"}
    with running_node(NodeProcess(data, extra_env=env)) as n:
        yield n


@contextlib.asynccontextmanager
async def opened(
    node: NodeProcess, query: str = "protocol=2&format=json"
) -> AsyncIterator[RawWebSocket]:
    ws = await RawWebSocket.connect(node, query)
    try:
        opcode, payload = await ws.read_frame()
        assert opcode == TEXT
        assert json.loads(payload)["event"].endswith(":connection_established")
        yield ws
    finally:
        await ws.close()


@pytest.fixture
async def v2(node: NodeProcess) -> AsyncIterator[RawWebSocket]:
    async with opened(node) as ws:
        yield ws


@pytest.fixture
async def v1(node: NodeProcess) -> AsyncIterator[RawWebSocket]:
    async with opened(node, "protocol=7") as ws:
        yield ws


def event_of(payload: bytes) -> dict[str, Any]:
    frame = json.loads(payload)
    assert isinstance(frame, dict)
    return frame


async def frames_for(ws: RawWebSocket, seconds: float) -> list[tuple[int, bytes]]:
    """Every frame within ``seconds``, answering none of them."""
    out: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(await ws.read_frame(left))
        except TimeoutError:
            break
        if out[-1][0] == CLOSE:
            break
    return out


async def until_closed(ws: RawWebSocket, within: float) -> tuple[list[tuple[int, bytes]], float]:
    """Frames up to and including the server's Close, and how long that took."""
    started = time.monotonic()
    seen: list[tuple[int, bytes]] = []
    while not seen or seen[-1][0] != CLOSE:
        seen.append(await ws.read_frame(within - (time.monotonic() - started)))
    return seen, time.monotonic() - started


async def assert_alive(ws: RawWebSocket, ping_event: str = "sockudo:ping") -> None:
    """An application ping round trip (server Pings on the way are answered)."""
    ws.send_text(json.dumps({"event": ping_event, "data": {}}))
    while True:
        opcode, payload = await ws.read_frame()
        assert opcode != CLOSE, close_code(payload)
        if opcode == PING:
            ws.send_frame(PONG, payload)
        elif opcode == TEXT and event_of(payload)["event"].endswith(":pong"):
            return


def assert_4201(seen: list[tuple[int, bytes]], prefix: str) -> None:
    """The last two frames: the error of spec 01 §2.4, then the close with the same code."""
    (error_op, error), (close_op, close) = seen[-2:]
    assert error_op == TEXT
    assert event_of(error) == {
        "event": f"{prefix}:error",
        "data": {"code": 4201, "message": "Pong reply not received in time"},
    }
    assert close_op == CLOSE
    assert close_code(close) == 4201


# --- V2: native WebSocket heartbeat (spec 02 §10.1) --------------------------------------------


async def test_v2_native_pings_answered_with_pongs_keep_the_socket(v2: RawWebSocket) -> None:
    pings = 0
    texts: list[str] = []
    deadline = time.monotonic() + OBSERVE
    while (left := deadline - time.monotonic()) > 0:
        try:
            opcode, payload = await v2.read_frame(left)
        except TimeoutError:
            break
        assert opcode != CLOSE, f"closed with {close_code(payload)}"
        if opcode == PING:
            pings += 1
            v2.send_frame(PONG, payload)
        elif opcode == TEXT:
            texts.append(event_of(payload)["event"])
    # A ping each second, past several pong deadlines, and no application heartbeat at all.
    assert pings >= 3
    assert texts == []
    await assert_alive(v2)


async def test_v2_unanswered_native_ping_closes_4201_in_time(v2: RawWebSocket) -> None:
    # Spec bound (acceptance 51): activity_timeout + 40 s; this node's: interval + pong_timeout.
    bound = PING_INTERVAL + PONG_TIMEOUT + SLACK
    assert bound <= ACTIVITY_TIMEOUT + 40
    seen, took = await until_closed(v2, within=bound + 5)
    assert took <= bound, took
    assert took >= PONG_TIMEOUT
    assert seen[0][0] == PING  # WebSocket Pings, never sockudo:ping
    assert all(op == PING for op, _ in seen[:-2])
    assert_4201(seen, "sockudo")


async def test_v2_other_frames_answer_pings_without_pongs(v2: RawWebSocket) -> None:
    async def chatter() -> None:
        while True:
            # Ignored silently on V2 (spec 02 §1.3): no reply, yet proof the client is alive.
            v2.send_text(json.dumps({"event": "sockudo:nothing", "data": {}}))
            await asyncio.sleep(0.4)

    talking = asyncio.create_task(chatter())
    try:
        seen = await frames_for(v2, OBSERVE)
    finally:
        talking.cancel()
    assert [op for op, _ in seen if op != PING] == []  # no close, no sockudo:ping
    assert len(seen) >= 3
    await assert_alive(v2)


async def test_client_pings_are_answered_with_pongs(v1: RawWebSocket, v2: RawWebSocket) -> None:
    # Hypercorn's wsproto answers them; the native heartbeat must not swallow them.
    for ws in (v1, v2):
        ws.send_frame(PING, b"client-ping")
        opcode, payload = await ws.read_frame()
        while opcode == PING:  # the server's own heartbeat may come first
            opcode, payload = await ws.read_frame()
        assert (opcode, payload) == (PONG, b"client-ping")


# --- V1 keeps pusher:ping (spec 01 §3.2) --------------------------------------------------------


async def test_v1_gets_pusher_ping_and_a_websocket_ping_answers_it(v1: RawWebSocket) -> None:
    pusher_pings = 0
    deadline = time.monotonic() + ACTIVITY_TIMEOUT + OBSERVE
    while (left := deadline - time.monotonic()) > 0:
        try:
            opcode, payload = await v1.read_frame(left)
        except TimeoutError:
            break
        assert opcode not in (CLOSE, PING), (opcode, payload)  # no native pings on V1
        if opcode == TEXT:
            assert event_of(payload) == {"event": "pusher:ping", "data": {}}
            pusher_pings += 1
            # "no pusher:pong (or pusher:ping, or a WebSocket protocol Ping)" closes: answer
            # with a protocol Ping only; its Pong comes back.
            v1.send_frame(PING, b"alive")
    assert pusher_pings >= 2
    await assert_alive(v1, "pusher:ping")


async def test_v1_unanswered_pusher_ping_closes_4201(v1: RawWebSocket) -> None:
    bound = ACTIVITY_TIMEOUT + PONG_TIMEOUT + SLACK
    seen, took = await until_closed(v1, within=bound + 5)
    assert ACTIVITY_TIMEOUT + PONG_TIMEOUT - 0.5 <= took <= bound, took
    assert seen[0] == (TEXT, b'{"event":"pusher:ping","data":{}}')
    assert_4201(seen, "pusher")


# --- the fallback stays available (spec 02 §10.1 last point, §10.2) -----------------------------


async def test_v2_without_auto_ping_uses_the_sockudo_ping_fallback(
    fallback_node: NodeProcess,
) -> None:
    async with opened(fallback_node) as ws:
        opcode, payload = await ws.read_frame(ACTIVITY_TIMEOUT + SLACK)
        assert (opcode, event_of(payload)) == (TEXT, {"event": "sockudo:ping", "data": {}})
        ws.send_text(json.dumps({"event": "sockudo:pong", "data": {}}))
        # Answered: the next ping comes after another activity_timeout, then nothing answers it.
        seen, took = await until_closed(ws, within=ACTIVITY_TIMEOUT + PONG_TIMEOUT + SLACK + 5)
        assert took <= ACTIVITY_TIMEOUT + PONG_TIMEOUT + SLACK, took
        assert [op for op, _ in seen].count(PING) == 0
        assert event_of(seen[0][1])["event"] == "sockudo:ping"
        assert_4201(seen, "sockudo")


# --- the real client ----------------------------------------------------------------------------


async def test_sockudo_python_stays_connected_through_native_heartbeats(node: NodeProcess) -> None:
    async def hold(fmt: str) -> None:
        async with sockudo_client(node, fmt) as c:
            socket_id = c.socket_id
            await asyncio.sleep(3 * (PING_INTERVAL + PONG_TIMEOUT))
            assert c.connection_state is ConnectionState.CONNECTED
            assert (c.socket_id, c.connections, c.closes) == (socket_id, 1, [])
            assert c.error_codes() == []
            # Kept alive by WebSocket Pings its `websockets` library answered, not the fallback.
            assert c.frames_named("sockudo:ping") == []

    await asyncio.gather(*(hold(fmt) for fmt in ("json", "messagepack", "protobuf")))
