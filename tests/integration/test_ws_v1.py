"""Protocol V1 end to end: a real node per log backend, raw websockets, signed publishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sockudo.auth import sign_channel_auth
from tests.support.api import SignedClient
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess
from tests.support.ws import (
    BACKENDS,
    TIMEOUT,
    established,
    node_for_backend,
    publish,
    recv,
    subscribe,
    ws_url,
)

EXTRA_APPS = """
[[app_manager.array.apps]]
id = "quota-app"
key = "quota-key"
secret = "quota-secret"

[app_manager.array.apps.policy.limits]
max_connections = 1

[[app_manager.array.apps]]
id = "origin-app"
key = "origin-key"
secret = "origin-secret"

[app_manager.array.apps.policy.channels]
allowed_origins = ["https://ok.example"]
"""


@pytest.fixture(scope="module", params=BACKENDS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    # One node per backend for the module: every test uses its own channels.
    yield from node_for_backend(
        request, Path(tmp_path_factory.mktemp("ws")) / "node", extra_config=EXTRA_APPS
    )


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[SignedClient]:
    client = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    yield client
    client.close()


@pytest.fixture
async def client(node: NodeProcess) -> AsyncIterator[tuple[ClientConnection, str]]:
    async with connect(ws_url(node)) as ws:
        yield ws, await established(ws)


async def test_connect_subscribe_and_receive_a_publish(
    client: tuple[ClientConnection, str], api: SignedClient
) -> None:
    ws, _ = client
    assert await subscribe(ws, "orders", auth="") == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": "orders",
        "data": "{}",
    }
    await publish(api, {"name": "order.created", "channel": "orders", "data": '{"id":1}'})
    assert await recv(ws) == {"event": "order.created", "channel": "orders", "data": '{"id":1}'}
    await publish(api, {"name": "obj", "channel": "orders", "data": {"a": [1, 2]}})
    assert await recv(ws) == {"event": "obj", "channel": "orders", "data": '{"a":[1,2]}'}


async def test_socket_id_exclusion_and_live_subscription_count(
    node: NodeProcess, api: SignedClient
) -> None:
    async with connect(ws_url(node)) as a, connect(ws_url(node)) as b:
        a_id = await established(a)
        await established(b)
        for ws in (a, b):
            assert (await subscribe(ws, "excl"))[
                "event"
            ] == "pusher_internal:subscription_succeeded"
        result = await publish(
            api,
            {
                "name": "e1",
                "channel": "excl",
                "data": "x",
                "socket_id": a_id,
                "info": "subscription_count",
            },
        )
        assert result["channels"]["excl"]["subscription_count"] == 2
        assert await recv(b) == {"event": "e1", "channel": "excl", "data": "x"}
        # A is excluded: the next thing it sees is the following event, not e1.
        await publish(api, {"name": "e2", "channel": "excl", "data": "y"})
        assert (await recv(a))["event"] == "e2"
        await a.send(json.dumps({"event": "pusher:unsubscribe", "data": {"channel": "excl"}}))
        await a.send(json.dumps({"event": "pusher:ping", "data": {}}))
        assert (await recv(a))["event"] == "pusher:pong"  # unsubscribe was processed before
        result = await publish(api, {"name": "e3", "channel": "excl", "info": "subscription_count"})
        assert result["channels"]["excl"]["subscription_count"] == 1


async def test_private_channel_auth(
    client: tuple[ClientConnection, str], api: SignedClient
) -> None:
    ws, socket_id = client
    wrong = sign_channel_auth(APP_KEY, APP_SECRET, "1.2", "private-orders")
    assert await subscribe(ws, "private-orders", wrong) == {
        "event": "pusher:error",
        "channel": "private-orders",
        "data": {"code": 4009, "message": "Invalid channel auth signature"},
    }
    assert (await subscribe(ws, "private-orders"))["data"]["code"] == 4009  # no auth at all
    right = sign_channel_auth(APP_KEY, APP_SECRET, socket_id, "private-orders")
    reply = await subscribe(ws, "private-orders", right)
    assert reply["event"] == "pusher_internal:subscription_succeeded"
    await publish(api, {"name": "p", "channel": "private-orders", "data": "secret"})
    assert await recv(ws) == {"event": "p", "channel": "private-orders", "data": "secret"}


async def test_encrypted_and_cache_channels(client: tuple[ClientConnection, str]) -> None:
    ws, socket_id = client
    channel = "private-encrypted-x"
    auth = sign_channel_auth(APP_KEY, APP_SECRET, socket_id, channel)
    assert (await subscribe(ws, channel, auth))["event"] == "pusher_internal:subscription_succeeded"
    assert (await subscribe(ws, "cache-empty"))["event"] == "pusher_internal:subscription_succeeded"
    assert await recv(ws) == {"event": "pusher:cache_miss", "channel": "cache-empty", "data": "{}"}


async def test_in_band_errors_keep_the_connection_open(
    client: tuple[ClientConnection, str], node: NodeProcess
) -> None:
    ws, socket_id = client
    reply = await subscribe(ws, "bad channel!")
    assert (reply["event"], reply["data"]["code"], reply["channel"]) == (
        "pusher:error",
        4300,
        "bad channel!",
    )
    assert (await subscribe(ws, "x" * 201))["data"]["code"] == 4300
    await ws.send("not json")
    assert (await recv(ws))["data"]["code"] == 4000
    await ws.send(json.dumps({"event": "foo", "data": {}}))
    assert (await recv(ws))["data"]["code"] == 4301
    # Lone surrogate escapes (no UTF-8 encoder takes them) are malformed frames, wherever they
    # are: a channel name, client event data, presence channel_data nested in a string.
    channel_data = '{"user_id":"\\ud800"}'
    auth = sign_channel_auth(APP_KEY, APP_SECRET, socket_id, "presence-sg", channel_data)
    for frame in (
        '{"event":"pusher:subscribe","data":{"channel":"s\\ud800"}}',
        '{"event":"client-x","channel":"private-sg","data":{"t":"\\udfff"}}',
        json.dumps(
            {
                "event": "pusher:subscribe",
                "data": {"channel": "presence-sg", "auth": auth, "channel_data": channel_data},
            }
        ),
    ):
        await ws.send(frame)
        assert (await recv(ws))["data"]["code"] == 4000, frame
    await ws.send(json.dumps({"event": "pusher:unknown_thing"}))  # ignored, no frame
    await ws.send(json.dumps({"event": "pusher:ping", "data": {}}))
    assert await recv(ws) == {"event": "pusher:pong", "data": {}}
    assert "Traceback" not in node.log_path.read_text(errors="replace")


async def test_unknown_key_and_disabled_app_are_rejected(node: NodeProcess) -> None:
    for key, code in (("unknown-key", 4001), ("disabled-key", 4003)):
        async with connect(ws_url(node, key=key)) as ws:
            frame = await recv(ws)
            assert frame["event"] == "pusher:error"
            assert frame["data"]["code"] == code
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == code


async def test_oversize_frame_closes_with_1009(client: tuple[ClientConnection, str]) -> None:
    ws, _ = client
    await ws.send(json.dumps({"event": "pusher:ping", "data": {"pad": "x" * 70 * 1024}}))
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


@pytest.mark.parametrize("query", ["protocol=abc", "protocol=300", "echo_messages=yes"])
async def test_bad_query_is_http_400_before_upgrade(node: NodeProcess, query: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(node, query=query)):
            pass
    assert refused.value.response.status_code == 400


async def test_protocol_omitted_or_v1_with_format_is_v1(node: NodeProcess) -> None:
    for query in ("client=js&version=8.4.0&flash=false", "protocol=7&format=xml"):
        async with connect(ws_url(node, query=query)) as ws:
            await established(ws)


async def test_server_ping_after_inactivity_and_4200_on_shutdown(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", extra_env={"ACTIVITY_TIMEOUT": "1"})
    node.start()
    try:
        async with connect(ws_url(node)) as ws:
            await established(ws, activity_timeout=1)
            assert await recv(ws) == {"event": "pusher:ping", "data": {}}
            await ws.send(json.dumps({"event": "pusher:pong", "data": {}}))
            assert await recv(ws) == {"event": "pusher:ping", "data": {}}  # still alive
            await ws.send(json.dumps({"event": "pusher:pong", "data": {}}))
            stopping = asyncio.create_task(asyncio.to_thread(node.stop))
            frame = await recv(ws)
            while frame["event"] == "pusher:ping":  # a ping may race the shutdown
                frame = await recv(ws)
            assert frame == {
                "event": "pusher:error",
                "data": {"code": 4200, "message": "Server shutting down"},
            }
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4200
            assert await stopping == 0
    finally:
        node.kill()


async def test_every_socket_gets_4200_on_shutdown(tmp_path: Path) -> None:
    # The server closes what is still open with its own code once the listener stops, so the
    # node lets its 4200 closes go out first; with many sockets none may get the server's.
    node = NodeProcess(tmp_path / "node")
    node.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            sockets = [await stack.enter_async_context(connect(ws_url(node))) for _ in range(200)]
            for ws in sockets:
                await established(ws)
            stopping = asyncio.create_task(asyncio.to_thread(node.stop))
            codes = [await _close_code(ws) for ws in sockets]
            assert codes == [4200] * len(sockets)
            assert await stopping == 0
    finally:
        node.kill()


async def _close_code(ws: ClientConnection) -> int | None:
    """The code the server closed ``ws`` with, after whatever frames came before it."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def _rejected_with(ws: ClientConnection) -> int:
    frame = await recv(ws)
    assert frame["event"] == "pusher:error", frame
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == frame["data"]["code"]
    return int(frame["data"]["code"])


async def test_app_connection_quota_4004_leaves_the_first_socket_alone(node: NodeProcess) -> None:
    async with connect(ws_url(node, key="quota-key")) as first:
        await established(first)
        async with connect(ws_url(node, key="quota-key")) as second:
            assert await _rejected_with(second) == 4004
        await first.send(json.dumps({"event": "pusher:ping", "data": {}}))
        assert await recv(first) == {"event": "pusher:pong", "data": {}}
    # The slot is free again once the first socket is gone.
    for _ in range(50):
        async with connect(ws_url(node, key="quota-key")) as again:
            frame = await recv(again)
            if frame["event"] == "pusher:connection_established":
                return
        await asyncio.sleep(0.05)
    raise AssertionError("quota slot never came back")


async def test_allowed_origins(node: NodeProcess) -> None:
    url = ws_url(node, key="origin-key")
    async with connect(url, origin="https://bad.example") as ws:  # type: ignore[arg-type]
        assert await _rejected_with(ws) == 4009
    async with connect(url, origin="https://ok.example") as ws:  # type: ignore[arg-type]
        await established(ws)
    async with connect(url) as ws:  # no Origin header at all
        assert await _rejected_with(ws) == 4009
