"""Raw V1 WebSocket helpers for tests against a real node (``websockets`` client)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from sockudo.auth import sign_channel_auth, sign_user_auth
from tests.support.api import SignedClient
from tests.support.node import APP_KEY, APP_SECRET, NodeProcess, running_node

TIMEOUT = 10.0
BACKENDS = ["embedded", pytest.param("kafka", marks=pytest.mark.kafka)]


def node_for_backend(
    request: pytest.FixtureRequest, data_dir: Path, **kwargs: Any
) -> Iterator[NodeProcess]:
    """Start a node on ``request.param``'s backend (a generator for fixtures)."""
    if request.param == "kafka":
        n = NodeProcess(
            data_dir,
            log_backend="kafka",
            kafka_bootstrap=request.getfixturevalue("kafka_bootstrap"),
            topic_prefix=f"t{uuid.uuid4().hex[:10]}",
            channel_partitions=3,
            **kwargs,
        )
    else:
        n = NodeProcess(data_dir, **kwargs)
    with running_node(n):
        yield n


def ws_url(node: NodeProcess, key: str = APP_KEY, query: str = "protocol=7") -> str:
    return f"ws://127.0.0.1:{node.port}/app/{key}?{query}"


async def recv(ws: ClientConnection, wait: float = TIMEOUT) -> dict[str, Any]:
    frame = json.loads(await asyncio.wait_for(ws.recv(), wait))
    assert isinstance(frame, dict)
    return frame


async def recv_until(
    ws: ClientConnection, match: Callable[[dict[str, Any]], bool], wait: float = TIMEOUT
) -> dict[str, Any]:
    """The first frame ``match`` accepts, skipping others (server pings, say)."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        frame = await recv(ws, max(0.01, remaining))
        if match(frame):
            return frame


async def nothing_more(ws: ClientConnection, wait: float = 0.5) -> None:
    """Assert no frame arrives within ``wait`` seconds."""
    try:
        frame = await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {frame!r}")


async def closed_with(ws: ClientConnection, wait: float = TIMEOUT) -> int:
    """Read until the server closes; the close code it sent (-1: no close frame)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), wait)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else -1


async def established(ws: ClientConnection, activity_timeout: int = 120) -> str:
    frame = await recv(ws)
    assert frame["event"] == "pusher:connection_established"
    data = json.loads(frame["data"])
    assert re.fullmatch(r"\d+\.\d+", data["socket_id"])
    assert data["activity_timeout"] == activity_timeout
    return str(data["socket_id"])


async def subscribe(ws: ClientConnection, channel: str, auth: str | None = None) -> dict[str, Any]:
    data: dict[str, str] = {"channel": channel}
    if auth is not None:
        data["auth"] = auth
    await ws.send(json.dumps({"event": "pusher:subscribe", "data": data}))
    return await recv(ws)


async def subscribe_private(ws: ClientConnection, socket_id: str, channel: str) -> dict[str, Any]:
    return await subscribe(ws, channel, sign_channel_auth(APP_KEY, APP_SECRET, socket_id, channel))


async def subscribe_presence(
    ws: ClientConnection,
    socket_id: str,
    channel: str,
    user_id: str,
    user_info: Any = None,
    *,
    channel_data: str | None = None,
) -> dict[str, Any]:
    """Subscribe with ``channel_data`` signed exactly as sent; the next frame."""
    if channel_data is None:
        body: dict[str, Any] = {"user_id": user_id}
        if user_info is not None:
            body["user_info"] = user_info
        channel_data = json.dumps(body)
    auth = sign_channel_auth(APP_KEY, APP_SECRET, socket_id, channel, channel_data)
    await ws.send(
        json.dumps(
            {
                "event": "pusher:subscribe",
                "data": {"channel": channel, "auth": auth, "channel_data": channel_data},
            }
        )
    )
    return await recv(ws)


def presence_of(frame: dict[str, Any]) -> dict[str, Any]:
    """The ``presence`` object of a ``subscription_succeeded``."""
    assert frame["event"] == "pusher_internal:subscription_succeeded", frame
    presence: dict[str, Any] = json.loads(frame["data"])["presence"]
    return presence


async def signin(ws: ClientConnection, socket_id: str, user_data: str) -> dict[str, Any]:
    auth = sign_user_auth(APP_KEY, APP_SECRET, socket_id, user_data)
    await ws.send(
        json.dumps({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
    )
    return await recv(ws)


async def publish(api: SignedClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await asyncio.to_thread(api.publish, body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert isinstance(result, dict)
    return result
