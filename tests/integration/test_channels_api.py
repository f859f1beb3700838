"""Channel state, user actions, publish ``info``, backend rate limit and batch idempotency.

A real node per log backend; raw ``websockets`` clients make channels occupied (spec 01 §5-6;
§10 checks 30, 33, 44, 47, 49, 50, 51, 53, 59).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pusher
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.api import SignedClient
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess
from tests.support.ws import (
    BACKENDS,
    closed_with,
    established,
    node_for_backend,
    nothing_more,
    presence_of,
    recv,
    recv_until,
    signin,
    subscribe,
    subscribe_presence,
    ws_url,
)

RATE_LIMITED_APP = """
[[app_manager.array.apps]]
id = "rl-app"
key = "rl-key"
secret = "rl-secret"
enabled = true

[app_manager.array.apps.policy.limits]
max_backend_events_per_second = 3
"""


@pytest.fixture(scope="module", params=BACKENDS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    yield from node_for_backend(
        request,
        Path(tmp_path_factory.mktemp("channels-api")) / "node",
        extra_config=RATE_LIMITED_APP,
    )


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[SignedClient]:
    client = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    yield client
    client.close()


@pytest.fixture(scope="module")
def sdk(node: NodeProcess) -> pusher.Pusher:
    return pusher.Pusher(
        app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=node.port, ssl=False
    )


class Clients:
    """Opens sockets on one node and closes them all at the end of a test."""

    def __init__(self, node: NodeProcess, stack: AsyncExitStack) -> None:
        self.node = node
        self.stack = stack

    async def open(self) -> tuple[ClientConnection, str]:
        ws = await self.stack.enter_async_context(connect(ws_url(self.node)))
        return ws, await established(ws)

    async def subscribed(self, channel: str) -> ClientConnection:
        ws, _ = await self.open()
        frame = await subscribe(ws, channel)
        assert frame["event"] == "pusher_internal:subscription_succeeded", frame
        return ws

    async def member(self, channel: str, user_id: str) -> ClientConnection:
        ws, socket_id = await self.open()
        presence_of(await subscribe_presence(ws, socket_id, channel, user_id))
        return ws


@pytest.fixture
async def clients(node: NodeProcess) -> AsyncIterator[Clients]:
    async with AsyncExitStack() as stack:
        yield Clients(node, stack)


async def get(api: SignedClient, path: str, **params: str) -> httpx.Response:
    return await asyncio.to_thread(
        api.request, "GET", f"/apps/{api.app_id}{path}", params=params or None
    )


async def get_ok(api: SignedClient, path: str, **params: str) -> dict[str, Any]:
    response = await get(api, path, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def post(
    api: SignedClient, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    raw = json.dumps(body).encode()
    return await asyncio.to_thread(api.request, "POST", path, body=raw, headers=headers)


def assert_invalid(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_input"


async def eventually(read: Callable[[], Any], expected: Any, within: float = 5.0) -> None:
    """Poll ``read`` (a coroutine function) until it returns ``expected``."""
    deadline = time.monotonic() + within
    while True:
        got = await read()
        if got == expected or time.monotonic() > deadline:
            assert got == expected
            return
        await asyncio.sleep(0.05)


# --- GET /channels ------------------------------------------------------------------------------


async def test_list_occupied_channels(clients: Clients, api: SignedClient) -> None:
    await clients.subscribed("lst-orders")
    await clients.subscribed("lst-orders")
    await clients.member("presence-lst-room", "u1")

    listed = (await get_ok(api, "/channels"))["channels"]
    assert listed["lst-orders"] == {}
    assert listed["presence-lst-room"] == {}
    assert all(value == {} for value in listed.values())

    assert await get_ok(api, "/channels", filter_by_prefix="lst-") == {
        "channels": {"lst-orders": {}}
    }
    assert await get_ok(api, "/channels", filter_by_prefix="lst-", info="subscription_count") == {
        "channels": {"lst-orders": {"subscription_count": 2}}
    }
    assert await get_ok(api, "/channels", filter_by_prefix="presence-lst-", info="user_count") == {
        "channels": {"presence-lst-room": {"user_count": 1}}
    }
    assert await get_ok(
        api, "/channels", filter_by_prefix="presence-lst-", info=" user_count , subscription_count"
    ) == {"channels": {"presence-lst-room": {"user_count": 1, "subscription_count": 1}}}
    assert await get_ok(api, "/channels", filter_by_prefix="nothing-here-") == {"channels": {}}


async def test_list_user_count_requires_a_presence_prefix(api: SignedClient) -> None:
    assert_invalid(await get(api, "/channels", info="user_count"))
    assert_invalid(await get(api, "/channels", filter_by_prefix="private-", info="user_count"))


# --- GET /channels/{channel} --------------------------------------------------------------------


async def test_channel_occupancy_and_subscription_count(
    clients: Clients, api: SignedClient
) -> None:
    ws = await clients.subscribed("one-orders")
    assert await get_ok(api, "/channels/one-orders", info="subscription_count") == {
        "occupied": True,
        "subscription_count": 1,
    }
    assert await get_ok(api, "/channels/one-orders") == {"occupied": True}
    assert_invalid(await get(api, "/channels/one-orders", info="user_count"))

    await ws.close()
    await eventually(
        lambda: get_ok(api, "/channels/one-orders", info="subscription_count"),
        {"occupied": False, "subscription_count": 0},
    )
    assert await get_ok(api, "/channels/never-used") == {"occupied": False}


async def test_channel_name_is_percent_decoded_then_validated(
    clients: Clients, api: SignedClient
) -> None:
    await clients.subscribed("enc@chan")
    # Signed as sent, still encoded (spec 01 §4.1); the route decodes it to `enc@chan`.
    assert await get_ok(api, "/channels/enc%40chan", info="subscription_count") == {
        "occupied": True,
        "subscription_count": 1,
    }
    assert_invalid(await get(api, "/channels/bad%20name"))
    assert_invalid(await get(api, "/channels/" + "x" * 201))
    assert_invalid(await get(api, "/channels/unknown-ns:thing"))


async def test_presence_channel_counts_users_once(clients: Clients, api: SignedClient) -> None:
    room = "presence-one-room"
    await clients.member(room, "u1")
    await clients.member(room, "u1")
    assert await get_ok(api, f"/channels/{room}", info="user_count,subscription_count") == {
        "occupied": True,
        "subscription_count": 2,
        "user_count": 1,
    }
    assert await get_ok(api, "/channels/presence-one-empty", info="user_count") == {
        "occupied": False,
        "user_count": 0,
    }


async def test_channel_cache_info(api: SignedClient) -> None:
    await post(api, f"/apps/{APP_ID}/events", {"name": "e0", "channel": "cache-one", "data": "a"})
    response = await post(
        api, f"/apps/{APP_ID}/events", {"name": "e1", "channel": "cache-one", "data": '{"p":1}'}
    )
    assert response.status_code == 200, response.text
    body = await get_ok(api, "/channels/cache-one", info="cache")
    assert body["occupied"] is False
    assert json.loads(body["cache"]["data"]) == {
        "event": "e1",
        "channel": "cache-one",
        "data": '{"p":1}',
    }
    assert 0 < body["cache"]["ttl"] <= 3600
    assert await get_ok(api, "/channels/cache-none", info="cache") == {"occupied": False}
    # Not a cache channel: nothing cached, no `cache` key.
    await post(api, f"/apps/{APP_ID}/events", {"name": "e", "channel": "plain-one", "data": "a"})
    assert await get_ok(api, "/channels/plain-one", info="cache") == {"occupied": False}


# --- GET /channels/{channel}/users --------------------------------------------------------------


async def test_presence_users(clients: Clients, api: SignedClient) -> None:
    room = "presence-usr-room"
    await clients.member(room, "u1")
    await clients.member(room, "u1")
    await clients.member(room, "u2")
    users = (await get_ok(api, f"/channels/{room}/users"))["users"]
    assert sorted(users, key=lambda u: u["id"]) == [{"id": "u1"}, {"id": "u2"}]
    assert await get_ok(api, "/channels/presence-usr-empty/users") == {"users": []}
    assert_invalid(await get(api, "/channels/usr-orders/users"))
    assert_invalid(await get(api, "/channels/private-usr/users"))


# --- the pusher SDK (its GETs carry the empty body's md5) ---------------------------------------


async def test_pusher_sdk_channel_queries(clients: Clients, sdk: pusher.Pusher) -> None:
    room = "presence-sdk-room"
    await clients.member(room, "sdk-u1")
    await clients.subscribed("sdk-orders")

    listed = await asyncio.to_thread(
        sdk.channels_info, prefix_filter="presence-sdk-", attributes=["user_count"]
    )
    assert listed == {"channels": {room: {"user_count": 1}}}
    everything = await asyncio.to_thread(sdk.channels_info)
    assert "sdk-orders" in everything["channels"]

    info = await asyncio.to_thread(sdk.channel_info, room, ["user_count", "subscription_count"])
    assert info == {"occupied": True, "user_count": 1, "subscription_count": 1}
    assert await asyncio.to_thread(sdk.channel_info, "sdk-orders") == {"occupied": True}

    assert await asyncio.to_thread(sdk.users_info, room) == {"users": [{"id": "sdk-u1"}]}


# --- publish info (spec 01 §5.1-5.2) ------------------------------------------------------------


async def test_publish_info_counts(clients: Clients, api: SignedClient) -> None:
    room = "presence-ev-room"
    await clients.member(room, "u1")
    await clients.member(room, "u1")

    response = await post(
        api,
        f"/apps/{APP_ID}/events",
        {"name": "ev", "channel": room, "data": "x", "info": "subscription_count,user_count"},
    )
    assert response.status_code == 200, response.text
    entry = response.json()["channels"][room]
    assert (entry["subscription_count"], entry["user_count"]) == (2, 1)

    response = await post(
        api,
        f"/apps/{APP_ID}/events",
        {"name": "ev", "channels": ["ev-plain", room], "data": "x", "info": "user_count"},
    )
    channels = response.json()["channels"]
    assert "user_count" not in channels["ev-plain"]
    assert "subscription_count" not in channels[room]
    assert channels[room]["user_count"] == 1

    response = await post(
        api,
        f"/apps/{APP_ID}/batch_events",
        {
            "batch": [
                {"channel": "ev-plain", "name": "a", "data": "1"},
                {"channel": room, "name": "b", "data": "2", "info": "user_count"},
            ]
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"batch": [{}, {"user_count": 1}]}


# --- max_backend_events_per_second --------------------------------------------------------------


async def test_backend_rate_limit(node: NodeProcess) -> None:
    rl = SignedClient(node.base_url, "rl-app", "rl-key", "rl-secret")
    try:

        def events(body: dict[str, Any]) -> httpx.Response:
            return rl.request("POST", "/apps/rl-app/events", body=json.dumps(body).encode())

        def batch(items: list[dict[str, Any]]) -> httpx.Response:
            raw = json.dumps({"batch": items}).encode()
            return rl.request("POST", "/apps/rl-app/batch_events", body=raw)

        def refused(response: httpx.Response) -> None:
            assert response.status_code == 429, response.text
            assert response.json()["code"] == "rate_limited"
            assert response.headers["retry-after"] == "1"

        # More units than the limit: never admitted (4 channels x 1 event > 3).
        refused(
            await asyncio.to_thread(
                events, {"name": "e", "channels": ["rl-a", "rl-b", "rl-c", "rl-d"], "data": "x"}
            )
        )
        # A full window, then more within the same second: refused, nothing published. A slow
        # machine may take over a second for the first publish; then try again.
        checked = False
        refused_channel = ""
        for attempt in range(3):
            refused_channel = f"rl-refused-{attempt}"
            await asyncio.sleep(1.1)  # a fresh window
            started = time.monotonic()
            ok = await asyncio.to_thread(
                events, {"name": "e", "channels": ["rl-a", "rl-b", "rl-c"], "data": "x"}
            )
            assert ok.status_code == 200, ok.text
            second = await asyncio.to_thread(
                events, {"name": "e", "channel": refused_channel, "data": "x"}
            )
            third = await asyncio.to_thread(
                batch, [{"name": "e", "channel": refused_channel, "data": "y"}]
            )
            if time.monotonic() - started < 0.9:  # still inside the first request's window
                refused(second)
                refused(third)
                checked = True
                break
        assert checked, "every attempt took longer than the one-second window"
        history = await asyncio.to_thread(
            rl.request, "GET", f"/apps/rl-app/channels/{refused_channel}/history"
        )
        assert history.status_code == 200, history.text
        assert history.json()["items"] == []

        await asyncio.sleep(1.1)
        again = await asyncio.to_thread(
            batch,
            [
                {"name": "e", "channel": "rl-a", "data": "1"},
                {"name": "e", "channels": ["rl-b", "rl-c"], "data": "2"},
            ],
        )
        assert again.status_code == 200, again.text
    finally:
        rl.close()


# --- X-Idempotency-Key on /batch_events (spec 01 §5.3, check 49) --------------------------------


async def test_batch_idempotency_header(clients: Clients, api: SignedClient) -> None:
    ws = await clients.subscribed("bidem-a")
    items = [
        {"channel": "bidem-a", "name": "e0", "data": "0"},
        {"channel": "bidem-a", "name": "e1", "data": "1", "info": "subscription_count"},
    ]
    header = {"X-Idempotency-Key": "k1"}
    first = await post(api, f"/apps/{APP_ID}/batch_events", {"batch": items}, header)
    assert first.status_code == 200, first.text
    assert first.json() == {"batch": [{}, {"subscription_count": 1}]}
    for name in ("e0", "e1"):
        assert (await recv(ws))["event"] == name

    second = await post(api, f"/apps/{APP_ID}/batch_events", {"batch": items}, header)
    assert second.status_code == 200, second.text
    assert second.json() == first.json()
    await nothing_more(ws)

    # A different batch under the same key: conflict, nothing published.
    other = [{"channel": "bidem-a", "name": "other", "data": "z"}, *items]
    conflict = await post(api, f"/apps/{APP_ID}/batch_events", {"batch": other}, header)
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["code"] == "idempotency_conflict"
    await nothing_more(ws)

    # Event keys live in another namespace: body key `k1` on /events is a first use.
    event = await post(
        api,
        f"/apps/{APP_ID}/events",
        {"channel": "bidem-a", "name": "e2", "data": "2", "idempotency_key": "k1"},
    )
    assert event.status_code == 200, event.text
    assert (await recv(ws))["event"] == "e2"

    # The same batch under another key publishes again.
    third = await post(
        api, f"/apps/{APP_ID}/batch_events", {"batch": items}, {"X-Idempotency-Key": "k2"}
    )
    assert third.status_code == 200, third.text
    assert [(await recv(ws))["event"] for _ in range(2)] == ["e0", "e1"]

    history = await asyncio.to_thread(api.history, "bidem-a", direction="oldest_first")
    assert [i["event_name"] for i in history.json()["items"]] == ["e0", "e1", "e2", "e0", "e1"]


async def test_batch_keeps_item_order_per_channel(clients: Clients, api: SignedClient) -> None:
    # Items are appended together (one group commit); each channel still sees them in order.
    a = await clients.subscribed("border-a")
    b = await clients.subscribed("border-b")
    items = [
        {"channel": "border-a" if i % 3 else "border-b", "name": f"e{i}", "data": str(i)}
        for i in range(10)
    ]
    response = await post(api, f"/apps/{APP_ID}/batch_events", {"batch": items})
    assert response.status_code == 200, response.text
    want_a = [f"e{i}" for i in range(10) if i % 3]
    want_b = [f"e{i}" for i in range(10) if not i % 3]
    assert [(await recv(a))["event"] for _ in want_a] == want_a
    assert [(await recv(b))["event"] for _ in want_b] == want_b
    for channel, want in (("border-a", want_a), ("border-b", want_b)):
        history = await asyncio.to_thread(api.history, channel, direction="oldest_first")
        page = history.json()["items"]
        assert [i["event_name"] for i in page] == want
        assert [i["serial"] for i in page] == list(range(1, len(want) + 1))


# --- user actions (spec 01 §5.4, checks 30 and 59) ----------------------------------------------


async def test_batch_item_key_conflict_rejects_the_whole_batch(
    clients: Clients, api: SignedClient
) -> None:
    ws = await clients.subscribed("bidem-items")
    used = {"channel": "bidem-items", "name": "first", "data": "1", "idempotency_key": "item-k"}
    assert (await post(api, f"/apps/{APP_ID}/events", used)).status_code == 200
    assert (await recv(ws))["event"] == "first"
    batch = [
        {"channel": "bidem-items", "name": "fresh", "data": "0", "idempotency_key": "new-k"},
        {**used, "data": "different"},
    ]
    conflict = await post(api, f"/apps/{APP_ID}/batch_events", {"batch": batch})
    assert conflict.status_code == 409, conflict.text
    await nothing_more(ws)  # item 0 was not published either
    # Its key was not claimed: the same item alone is a first use.
    alone = await post(api, f"/apps/{APP_ID}/events", batch[0])
    assert alone.status_code == 200, alone.text
    assert (await recv(ws))["event"] == "fresh"


async def test_terminate_connections_and_alias(
    clients: Clients, api: SignedClient, sdk: pusher.Pusher
) -> None:
    a, a_id = await clients.open()
    await signin(a, a_id, '{"id":"tc-u1"}')
    b, b_id = await clients.open()
    await signin(b, b_id, '{"id":"tc-u2"}')
    bystander, _ = await clients.open()

    response = await post(api, f"/apps/{APP_ID}/users/tc-u1/terminate_connections", {})
    assert response.status_code == 200, response.text
    assert response.json() == {}
    error = await recv_until(a, lambda f: f["event"] == "pusher:error")
    assert error["data"] == {"code": 4009, "message": "You got disconnected by the app."}
    assert await closed_with(a) == 4009

    # pusher 3.3.4 posts the un-prefixed alias, signed as sent; the app comes from auth_key.
    assert await asyncio.to_thread(sdk.terminate_user_connections, "tc-u2") == {}
    assert await closed_with(b) == 4009

    await bystander.send(json.dumps({"event": "pusher:ping", "data": {}}))
    assert (await recv(bystander))["event"] == "pusher:pong"

    # Unknown users are a no-op.
    nobody = await post(api, f"/apps/{APP_ID}/users/nobody/terminate_connections", {})
    assert (nobody.status_code, nobody.json()) == (200, {})


async def test_force_reconnect(clients: Clients, api: SignedClient) -> None:
    a, a_id = await clients.open()
    await signin(a, a_id, '{"id":"fr-u1"}')
    response = await post(api, f"/apps/{APP_ID}/users/fr-u1/force_reconnect", {})
    assert (response.status_code, response.json()) == (200, {})
    error = await recv_until(a, lambda f: f["event"] == "pusher:error")
    assert error["data"] == {"code": 4200, "message": "Force reconnect requested by the app."}
    assert await closed_with(a) == 4200


async def test_user_routes_are_signed(api: SignedClient) -> None:
    wrong = await asyncio.to_thread(
        api.request,
        "POST",
        f"/apps/{APP_ID}/users/u1/terminate_connections",
        body=b"{}",
        secret="wrong",
    )
    assert wrong.status_code == 401
    other_app = await post(api, "/apps/other/users/u1/force_reconnect", {})
    assert other_app.status_code == 401
    unknown_key = await asyncio.to_thread(
        api.request, "POST", "/users/u1/terminate_connections", body=b"{}", key="nope"
    )
    assert (unknown_key.status_code, unknown_key.json()["code"]) == (404, "app_not_found")
    alias = await post(api, "/users/u1/terminate_connections", {})
    assert (alias.status_code, alias.json()) == (200, {})
