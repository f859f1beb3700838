"""Presence, client events, signin, user channels, terminations and cache channels end to end.

A real node per log backend and raw ``websockets`` clients: every presence change and client
event goes through the log and comes back out of the fold (spec 01 §3.8-3.12, §5.4; §10
checks 18-30, 52, 55, 59).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

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
    publish,
    recv,
    recv_until,
    signin,
    subscribe,
    subscribe_presence,
    subscribe_private,
    ws_url,
)

LIMITS_APP = """
[[app_manager.array.apps]]
id = "limits-app"
key = "limits-key"
secret = "limits-secret"
enabled = true

[app_manager.array.apps.policy.limits]
max_presence_members_per_channel = 2
max_client_events_per_second = 2

[app_manager.array.apps.policy.features]
enable_client_messages = true
"""


@pytest.fixture(scope="module", params=BACKENDS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    yield from node_for_backend(
        request, Path(tmp_path_factory.mktemp("presence")) / "node", extra_config=LIMITS_APP
    )


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[SignedClient]:
    client = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    yield client
    client.close()


class Clients:
    """Opens sockets on one node and closes them all at the end of a test."""

    def __init__(self, node: NodeProcess, stack: AsyncExitStack) -> None:
        self.node = node
        self.stack = stack

    async def open(self, key: str = APP_KEY) -> tuple[ClientConnection, str]:
        ws = await self.stack.enter_async_context(connect(ws_url(self.node, key=key)))
        return ws, await established(ws)


@pytest.fixture
async def clients(node: NodeProcess) -> AsyncIterator[Clients]:
    async with AsyncExitStack() as stack:
        yield Clients(node, stack)


def event_of(frame: dict[str, object]) -> object:
    return frame["event"]


# --- presence ----------------------------------------------------------------------------------


async def test_members_are_added_and_removed_per_user(clients: Clients) -> None:
    a, a_id = await clients.open()
    b, b_id = await clients.open()
    b2, b2_id = await clients.open()
    room = "presence-room-1"

    first = presence_of(await subscribe_presence(a, a_id, room, "u1", {"name": "Ann"}))
    assert (first["count"], first["ids"], first["hash"]) == (1, ["u1"], {"u1": {"name": "Ann"}})

    second = presence_of(await subscribe_presence(b, b_id, room, "u2"))
    assert second["count"] == 2
    assert sorted(second["ids"]) == ["u1", "u2"]
    assert second["hash"] == {"u1": {"name": "Ann"}, "u2": {}}
    added = await recv(a)
    assert added == {
        "event": "pusher_internal:member_added",
        "channel": room,
        "data": json.dumps({"user_id": "u2", "user_info": {}}, separators=(",", ":")),
    }

    # Another tab of u2: no member_added for anyone, and it sees two members.
    third = presence_of(await subscribe_presence(b2, b2_id, room, "u2", {"ignored": True}))
    assert (third["count"], third["hash"]["u2"]) == (2, {})
    await nothing_more(a)

    # That tab leaves: u2 still has a socket, so no member_removed.
    await b2.close()
    await nothing_more(a)
    # u2's last socket unsubscribes: member_removed to the remaining subscriber.
    await b.send(json.dumps({"event": "pusher:unsubscribe", "data": {"channel": room}}))
    assert await recv(a) == {
        "event": "pusher_internal:member_removed",
        "channel": room,
        "data": '{"user_id":"u2"}',
    }


async def test_disconnect_removes_the_member_and_publishes_reach_members(
    clients: Clients, api: SignedClient
) -> None:
    a, a_id = await clients.open()
    b, b_id = await clients.open()
    room = "presence-room-2"
    await subscribe_presence(a, a_id, room, "u1")
    await subscribe_presence(b, b_id, room, "u2")
    await recv(a)  # member_added u2
    result = await publish(
        api,
        {"name": "note", "channel": room, "data": "hi", "info": "subscription_count,user_count"},
    )
    assert result["channels"][room]["subscription_count"] == 2
    assert result["channels"][room]["user_count"] == 2
    for ws in (a, b):
        assert await recv(ws) == {"event": "note", "channel": room, "data": "hi"}
    await a.close()
    removed = await recv(b)
    assert (removed["event"], json.loads(removed["data"])) == (
        "pusher_internal:member_removed",
        {"user_id": "u1"},
    )


async def test_member_limit_admits_existing_users_only(clients: Clients) -> None:
    room = "presence-full"
    sockets = [await clients.open("limits-key") for _ in range(4)]
    (a, a_id), (b, b_id), (c, c_id), (a2, a2_id) = sockets
    from sockudo.auth import sign_channel_auth

    async def join(ws: ClientConnection, sid: str, user: str) -> dict[str, object]:
        data = json.dumps({"user_id": user})
        auth = sign_channel_auth("limits-key", "limits-secret", sid, room, data)
        await ws.send(
            json.dumps(
                {
                    "event": "pusher:subscribe",
                    "data": {"channel": room, "auth": auth, "channel_data": data},
                }
            )
        )
        return await recv(ws)

    assert event_of(await join(a, a_id, "u1")) == "pusher_internal:subscription_succeeded"
    assert event_of(await join(b, b_id, "u2")) == "pusher_internal:subscription_succeeded"
    full = await join(c, c_id, "u3")
    assert full == {
        "event": "pusher:error",
        "channel": room,
        "data": {"code": 4100, "message": "Over capacity"},
    }
    # Another socket of a present user is always admitted.
    assert event_of(await join(a2, a2_id, "u1")) == "pusher_internal:subscription_succeeded"
    # The refused socket is not in the channel: client events there are refused too.
    await c.send(json.dumps({"event": "client-x", "channel": room, "data": {}}))
    assert (await recv(c))["data"]["code"] == 4301


async def test_member_limit_holds_when_users_join_at_once(clients: Clients) -> None:
    room = "presence-rush"
    sockets = [await clients.open("limits-key") for _ in range(8)]
    from sockudo.auth import sign_channel_auth

    for n, (ws, sid) in enumerate(sockets):  # every subscribe is sent before any answer
        data = json.dumps({"user_id": f"rush-{n}"})
        auth = sign_channel_auth("limits-key", "limits-secret", sid, room, data)
        subscribe = {"channel": room, "auth": auth, "channel_data": data}
        await ws.send(json.dumps({"event": "pusher:subscribe", "data": subscribe}))
    answers = [event_of(await recv(ws)) for ws, _ in sockets]
    # Joins in flight count: before, every join checked the folded count alone and 5-8 of
    # these got in past the limit of 2.
    assert answers.count("pusher_internal:subscription_succeeded") == 2, answers
    assert answers.count("pusher:error") == 6, answers


# --- client events ------------------------------------------------------------------------------


async def test_client_events_reach_others_but_never_the_sender(clients: Clients) -> None:
    a, a_id = await clients.open()
    b, b_id = await clients.open()
    chat = "private-chat-1"
    for ws, sid in ((a, a_id), (b, b_id)):
        assert event_of(await subscribe_private(ws, sid, chat)) == (
            "pusher_internal:subscription_succeeded"
        )
    await a.send(json.dumps({"event": "client-typing", "channel": chat, "data": {"typing": True}}))
    assert await recv(b) == {"event": "client-typing", "channel": chat, "data": {"typing": True}}
    await a.send(json.dumps({"event": "client-text", "channel": chat, "data": "as string"}))
    assert await recv(b) == {"event": "client-text", "channel": chat, "data": "as string"}
    await nothing_more(a)


async def test_presence_client_events_carry_user_id(clients: Clients) -> None:
    a, a_id = await clients.open()
    b, b_id = await clients.open()
    room = "presence-chat"
    await subscribe_presence(a, a_id, room, "u1")
    await subscribe_presence(b, b_id, room, "u2")
    await recv(a)  # member_added
    await a.send(json.dumps({"event": "client-wave", "channel": room, "data": {"x": 1}}))
    assert await recv(b) == {
        "event": "client-wave",
        "channel": room,
        "data": {"x": 1},
        "user_id": "u1",
    }


async def test_client_event_errors_deliver_nothing(clients: Clients) -> None:
    a, a_id = await clients.open()
    b, _ = await clients.open()
    await subscribe(a, "orders-ce")
    await subscribe(b, "orders-ce")
    enc = "private-encrypted-ce"
    await subscribe_private(a, a_id, enc)
    for channel in ("orders-ce", enc, "private-not-joined"):
        await a.send(json.dumps({"event": "client-x", "channel": channel, "data": {}}))
        error = await recv(a)
        assert (error["event"], error["data"]["code"], error["channel"]) == (
            "pusher:error",
            4301,
            channel,
        )
    await nothing_more(b)


async def test_client_event_rate_limit(clients: Clients) -> None:
    from sockudo.auth import sign_channel_auth

    a, a_id = await clients.open("limits-key")
    chat = "private-rate"
    auth = sign_channel_auth("limits-key", "limits-secret", a_id, chat)
    await subscribe(a, chat, auth)
    for _ in range(3):
        await a.send(json.dumps({"event": "client-x", "channel": chat, "data": {}}))
    error = await recv(a)
    assert error["data"]["code"] == 4301
    assert "rate limit" in error["data"]["message"]
    await a.send(json.dumps({"event": "pusher:ping", "data": {}}))
    assert (await recv(a))["event"] == "pusher:pong"  # still open


# --- signin, user channels, terminations --------------------------------------------------------


async def test_signin_and_user_channel_delivery(clients: Clients, api: SignedClient) -> None:
    a, a_id = await clients.open()
    a2, a2_id = await clients.open()
    other, _ = await clients.open()
    user_data = '{"id": "sign-u1", "user_info": {"name": "Ann"}}'
    for ws, sid in ((a, a_id), (a2, a2_id)):
        ok = await signin(ws, sid, user_data)
        assert ok == {"event": "pusher:signin_success", "data": {"user_data": user_data}}
    bad = await signin(other, "1.1", user_data)  # signed for another socket id
    assert (bad["event"], bad["data"]["code"]) == ("pusher:error", 4009)

    assert event_of(await subscribe(a, "#server-to-user-sign-u1")) == (
        "pusher_internal:subscription_succeeded"
    )
    refused = await subscribe(a, "#server-to-user-someone-else")
    assert refused["data"]["code"] == 4009

    await publish(api, {"name": "dm", "channel": "#server-to-user-sign-u1", "data": "hello"})
    for ws in (a, a2):  # a2 never subscribed: user channels follow the identity
        assert await recv(ws) == {
            "event": "dm",
            "channel": "#server-to-user-sign-u1",
            "data": "hello",
        }
    await nothing_more(other)


async def _post_user_action(api: SignedClient, user: str, action: str) -> None:
    response = await asyncio.to_thread(
        api.request, "POST", f"/apps/{APP_ID}/users/{user}/{action}", body=b"{}"
    )
    assert response.status_code == 200, response.text
    assert response.json() == {}


async def test_terminate_connections_closes_only_that_user(
    clients: Clients, api: SignedClient
) -> None:
    a, a_id = await clients.open()
    b, b_id = await clients.open()
    observer, o_id = await clients.open()
    room = "presence-term"
    await signin(a, a_id, '{"id":"term-u1"}')
    await subscribe_presence(a, a_id, room, "term-u1")
    await subscribe_presence(b, b_id, room, "term-u1")
    await subscribe_presence(observer, o_id, room, "term-u2")

    await _post_user_action(api, "term-u1", "terminate_connections")
    for ws in (a, b):
        error = await recv_until(ws, lambda f: f["event"] == "pusher:error")
        assert error["data"] == {"code": 4009, "message": "You got disconnected by the app."}
        assert await closed_with(ws) == 4009
    removed = await recv(observer)
    assert (removed["event"], json.loads(removed["data"])) == (
        "pusher_internal:member_removed",
        {"user_id": "term-u1"},
    )
    await observer.send(json.dumps({"event": "pusher:ping", "data": {}}))
    assert (await recv(observer))["event"] == "pusher:pong"
    await _post_user_action(api, "nobody-here", "terminate_connections")  # a no-op


async def test_force_reconnect_closes_with_4200(clients: Clients, api: SignedClient) -> None:
    a, a_id = await clients.open()
    await signin(a, a_id, '{"id":"recon-u1"}')
    await _post_user_action(api, "recon-u1", "force_reconnect")
    error = await recv(a)
    assert error["data"] == {"code": 4200, "message": "Force reconnect requested by the app."}
    assert await closed_with(a) == 4200


async def test_watchlist_online_and_offline(clients: Clients) -> None:
    u2, u2_id = await clients.open()
    await signin(u2, u2_id, '{"id":"wl-u2"}')
    u1, u1_id = await clients.open()
    await signin(u1, u1_id, '{"id":"wl-u1","watchlist":["wl-u2","wl-u3"]}')
    status = await recv(u1)
    assert status["event"] == "pusher_internal:watchlist_events"
    events = json.loads(status["data"])["events"]
    assert {"name": "online", "user_ids": ["wl-u2"]} in events
    assert {"name": "offline", "user_ids": ["wl-u3"]} in events

    u3, u3_id = await clients.open()
    await signin(u3, u3_id, '{"id":"wl-u3"}')
    online = await recv(u1)
    assert json.loads(online["data"])["events"] == [{"name": "online", "user_ids": ["wl-u3"]}]
    await u3.close()
    offline = await recv(u1)
    assert json.loads(offline["data"])["events"] == [{"name": "offline", "user_ids": ["wl-u3"]}]


# --- cache channels -----------------------------------------------------------------------------


async def test_cache_channel_replays_the_last_publish(clients: Clients, api: SignedClient) -> None:
    await publish(api, {"name": "e0", "channel": "cache-prices", "data": "old"})
    await publish(api, {"name": "e1", "channel": "cache-prices", "data": '{"p":1}'})
    a, _ = await clients.open()
    assert event_of(await subscribe(a, "cache-prices")) == "pusher_internal:subscription_succeeded"
    assert await recv(a) == {"event": "e1", "channel": "cache-prices", "data": '{"p":1}'}
    assert event_of(await subscribe(a, "cache-nothing-yet")) == (
        "pusher_internal:subscription_succeeded"
    )
    assert await recv(a) == {
        "event": "pusher:cache_miss",
        "channel": "cache-nothing-yet",
        "data": "{}",
    }


# --- restart hygiene ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_members_of_a_killed_node_are_removed_on_restart(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    request.param = backend  # type: ignore[attr-defined]
    nodes = node_for_backend(request, tmp_path / "node")
    node = next(nodes)
    try:
        room = "presence-restart"
        async with connect(ws_url(node)) as ws:
            sid = await established(ws)
            presence_of(await subscribe_presence(ws, sid, room, "ghost"))
            node.kill()  # SIGKILL: no leave is ever appended
        node.start()
        async with connect(ws_url(node)) as ws:
            sid = await established(ws)
            members = presence_of(await subscribe_presence(ws, sid, room, "fresh"))
            assert members["ids"] == ["fresh"]
    finally:
        for _ in nodes:
            pass


async def test_graceful_stop_appends_the_leaves_itself(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node")
    node.start()
    try:
        room = "presence-graceful"
        async with connect(ws_url(node)) as ws:
            sid = await established(ws)
            presence_of(await subscribe_presence(ws, sid, room, "leaver"))
            assert await asyncio.to_thread(node.stop) == 0
        log_before = node.log_path.read_text()
        node.start()
        async with connect(ws_url(node)) as ws:
            sid = await established(ws)
            members = presence_of(await subscribe_presence(ws, sid, room, "next"))
            assert members["ids"] == ["next"]
        # The stopping node left on its own: the restart had nothing to clean up.
        restart_log = node.log_path.read_text()[len(log_before) :]
        assert "declaring earlier incarnation" not in restart_log
    finally:
        node.kill()
