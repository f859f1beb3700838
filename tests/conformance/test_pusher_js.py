"""The real pusher-js 8 client (its Node build) against a real node (spec 01 §3, §5.4, §10).

Each client is ``node tests/conformance/js/driver.js`` driven by ``tests/support/pusher_js.py``;
private, presence and user authentication go through a local auth endpoint that signs with the
real ``pusher`` SDK (``tests/support/auth_server.py``), and server-side publishes use the SDK or
the signed HTTP API. Everything runs on the embedded log and on Kafka.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pusher
import pytest

from tests.support.api import SignedClient
from tests.support.auth_server import AuthServer
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess
from tests.support.pusher_js import (
    SOCKET_ID,
    Event,
    PusherJs,
    matcher,
    pusher_js_clients,
    unavailable_reason,
)
from tests.support.ws import BACKENDS, node_for_backend

_UNAVAILABLE = unavailable_reason()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")

Clients = Callable[[str], PusherJs]


@pytest.fixture(scope="module", params=BACKENDS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    # One node per backend for the module: every test uses its own channels and user ids.
    yield from node_for_backend(request, Path(tmp_path_factory.mktemp("pusher-js")) / "node")


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


@pytest.fixture(scope="module")
def auth() -> Iterator[AuthServer]:
    with AuthServer(APP_ID, APP_KEY, APP_SECRET) as server:
        yield server


@pytest.fixture
def clients() -> Iterator[Clients]:
    with pusher_js_clients() as make:
        yield make


def uid() -> str:
    return uuid.uuid4().hex[:8]


def error_code(event: Event) -> int | None:
    """The Pusher error code in a connection ``error`` event, however pusher-js wrapped it.

    ``pusher:error`` frames arrive as ``{type: "PusherError", data: {code, message}}``; close
    codes as ``{type: "WebSocketError", error: {type: "PusherError", data: {code, …}}}``.
    """
    error = event.get("error") or {}
    for candidate in (error, error.get("error") or {}):
        data = candidate.get("data") if isinstance(candidate, dict) else None
        if isinstance(data, dict) and isinstance(data.get("code"), int):
            return int(data["code"])
    return None


def is_error(code: int) -> Callable[[Event], bool]:
    return lambda e: e.get("type") == "error" and error_code(e) == code


def channel_event(channel: str, event: str, **fields: Any) -> Callable[[Event], bool]:
    return matcher("channel_event", channel=channel, event=event, **fields)


def user_request(api: SignedClient, user_id: str, action: str) -> None:
    response = api.request("POST", f"/apps/{APP_ID}/users/{user_id}/{action}", body=b"{}")
    assert response.status_code == 200, response.text
    assert response.json() == {}


# -- connection, public and private channels ---------------------------------------------------


def test_connect_gets_a_socket_id(node: NodeProcess, clients: Clients) -> None:
    client = clients("a")
    assert client.version == "8.4.0"
    socket_id = client.connect(node)
    assert socket_id is not None
    assert SOCKET_ID.fullmatch(socket_id), socket_id
    assert client.state() == ("connected", socket_id)
    client.disconnect()
    client.expect_event("state", previous="connected", current="disconnected")


def test_unknown_app_key_is_refused_without_reconnecting(
    node: NodeProcess, clients: Clients
) -> None:
    client = clients("a")
    client.connect(node, key="no-such-key", wait=False)
    client.expect(is_error(4001))
    client.expect_event("state", current="disconnected")
    client.assert_no(matcher("state", current="connecting"), wait=1.5)


def test_public_subscribe_receives_http_publishes(
    node: NodeProcess, clients: Clients, sdk: pusher.Pusher, api: SignedClient
) -> None:
    client = clients("a")
    client.connect(node)
    channel = f"orders-{uid()}"
    assert client.subscribe(channel) == {"type": "subscription_succeeded", "channel": channel}
    assert sdk.trigger(channel, "order.created", {"id": 1, "items": ["a", "b"]}) == {}
    got = client.expect(matcher("channel_event", channel=channel, event="order.created"))
    assert got["data"] == {"id": 1, "items": ["a", "b"]}
    sdk.trigger([channel], "note", "plain text")
    assert client.expect(channel_event(channel, "note"))["data"] == "plain text"
    response = api.publish({"name": "raw", "channel": channel, "data": '{"a":[1,2]}'})
    assert response.status_code == 200, response.text
    assert client.expect(channel_event(channel, "raw"))["data"] == {"a": [1, 2]}

    client.unsubscribe(channel)
    client.state()  # a round trip through the driver after the unsubscribe frame went out
    sdk.trigger(channel, "after", "x")
    client.assert_no(channel_event(channel, "after"))


def test_private_subscribe_through_the_auth_endpoint(
    node: NodeProcess, clients: Clients, auth: AuthServer, sdk: pusher.Pusher
) -> None:
    client = clients("a")
    socket_id = client.connect(node, auth)
    channel = f"private-orders-{uid()}"
    client.subscribe(channel)
    [request] = [r for r in auth.requests_of("channel") if r.form["channel_name"] == channel]
    assert request.form["socket_id"] == socket_id
    assert request.status == 200
    sdk.trigger(channel, "order.paid", {"total": 12.5})
    assert client.expect(channel_event(channel, "order.paid"))["data"] == {"total": 12.5}


def test_auth_endpoint_refusal_is_a_subscription_error(
    node: NodeProcess, clients: Clients, auth: AuthServer, sdk: pusher.Pusher
) -> None:
    client = clients("a")
    client.connect(node, auth)
    channel = f"private-denied-{uid()}"
    auth.denied_channels.add(channel)
    client.send("subscribe", channel=channel)
    error = client.expect_event("subscription_error", channel=channel)
    assert error["error"]["type"] == "AuthError"
    assert error["error"]["status"] == 403
    sdk.trigger(channel, "secret", "x")
    client.assert_no(lambda e: e.get("channel") == channel)


# -- presence ----------------------------------------------------------------------------------


def test_presence_members_join_and_leave(
    node: NodeProcess, clients: Clients, auth: AuthServer
) -> None:
    u1, u2 = f"u1-{uid()}", f"u2-{uid()}"
    auth.add_user(u1, {"name": "Ann"})
    auth.add_user(u2, {"name": "Bob"})
    channel = f"presence-room-{uid()}"
    a, b = clients("a"), clients("b")
    a.connect(node, auth, u1)
    b.connect(node, auth, u2)

    first = a.subscribe(channel)
    assert first is not None
    assert first["members"]["count"] == 1
    assert first["members"]["ids"] == [u1]
    assert first["members"]["me"] == {"id": u1, "info": {"name": "Ann"}}

    second = b.subscribe(channel)
    assert second is not None
    assert second["members"]["count"] == 2
    assert second["members"]["ids"] == sorted([u1, u2])
    assert second["members"]["me"] == {"id": u2, "info": {"name": "Bob"}}
    assert second["members"]["hash"] == {u1: {"name": "Ann"}, u2: {"name": "Bob"}}

    added = a.expect_event("member_added", channel=channel)
    assert added["member"] == {"id": u2, "info": {"name": "Bob"}}
    assert added["members"]["count"] == 2
    assert added["members"]["ids"] == sorted([u1, u2])
    b.assert_no(matcher("member_added", channel=channel))

    b.disconnect()
    removed = a.expect_event("member_removed", channel=channel)
    assert removed["member"] == {"id": u2, "info": {"name": "Bob"}}
    assert removed["members"]["count"] == 1
    assert removed["members"]["ids"] == [u1]
    assert a.members(channel)["me"] == {"id": u1, "info": {"name": "Ann"}}


# -- client events -----------------------------------------------------------------------------


def test_client_events_between_two_clients_on_a_private_channel(
    node: NodeProcess, clients: Clients, auth: AuthServer
) -> None:
    channel = f"private-chat-{uid()}"
    a, b = clients("a"), clients("b")
    a.connect(node, auth)
    b.connect(node, auth)
    a.subscribe(channel)
    b.subscribe(channel)

    assert a.trigger(channel, "client-typing", {"typing": True}) is True
    got = b.expect(channel_event(channel, "client-typing"))
    assert got["data"] == {"typing": True}
    assert b.trigger(channel, "client-reply", "ok") is True
    assert a.expect(channel_event(channel, "client-reply"))["data"] == "ok"
    # V1 never echoes a client event to its sender.
    a.assert_no(channel_event(channel, "client-typing"))
    b.assert_no(channel_event(channel, "client-reply"))
    a.assert_no(matcher("error"), wait=0)
    b.assert_no(matcher("error"), wait=0)


def test_client_event_on_a_presence_channel_carries_the_user_id(
    node: NodeProcess, clients: Clients, auth: AuthServer
) -> None:
    u1, u2 = f"u1-{uid()}", f"u2-{uid()}"
    auth.add_user(u1, {"name": "Ann"})
    auth.add_user(u2)
    channel = f"presence-chat-{uid()}"
    a, b = clients("a"), clients("b")
    a.connect(node, auth, u1)
    b.connect(node, auth, u2)
    a.subscribe(channel)
    b.subscribe(channel)
    b.bind(channel, "client-wave")

    assert a.trigger(channel, "client-wave", {"hand": "left"}) is True
    got = b.expect_event("bound_event", channel=channel, event="client-wave")
    assert got["data"] == {"hand": "left"}
    assert got["user_id"] == u1
    a.assert_no(channel_event(channel, "client-wave"))


def test_client_event_on_a_public_channel_is_rejected(node: NodeProcess, clients: Clients) -> None:
    channel = f"public-chat-{uid()}"
    a, b = clients("a"), clients("b")
    a.connect(node)
    b.connect(node)
    a.subscribe(channel)
    b.subscribe(channel)
    a.trigger(channel, "client-typing", {"typing": True})  # pusher-js sends it anyway
    a.expect(is_error(4301))
    b.assert_no(channel_event(channel, "client-typing"))
    assert a.state()[0] == "connected"


# -- user authentication -----------------------------------------------------------------------


def test_signin_then_server_to_user_publish(
    node: NodeProcess, clients: Clients, auth: AuthServer, sdk: pusher.Pusher
) -> None:
    user = f"user-{uid()}"
    auth.add_user(user, {"name": "Ann"})
    a, other = clients("a"), clients("other")
    socket_id = a.connect(node, auth, user)
    other.connect(node, auth, "nobody")

    a.signin()
    success = a.expect_event("signin_success")
    assert success["user_data"] == {"id": user, "user_info": {"name": "Ann"}}
    [request] = auth.requests_of("user")[-1:]
    assert request.form["socket_id"] == socket_id
    # pusher-js then subscribes to its own user channel on its own.
    a.expect_event("user_channel_subscribed", channel=f"#server-to-user-{user}")

    sdk.send_to_user(user, "notice", {"n": 1})
    assert a.expect_event("user_event", event="notice")["data"] == {"n": 1}
    other.assert_no(lambda e: e.get("event") == "notice")
    a.assert_no(matcher("error"), wait=0)


def test_watchlist_online_and_offline(
    node: NodeProcess, clients: Clients, auth: AuthServer
) -> None:
    watcher, w2, w3 = f"w1-{uid()}", f"w2-{uid()}", f"w3-{uid()}"
    auth.add_user(watcher, watchlist=[w2, w3])
    auth.add_user(w2)
    auth.add_user(w3)
    c2, c1, c3 = clients("w2"), clients("watcher"), clients("w3")
    c2.connect(node, auth, w2)
    c2.signin()
    c2.expect_event("signin_success")

    c1.connect(node, auth, watcher)
    c1.signin()
    c1.expect_event("signin_success")
    assert c1.expect_event("watchlist", name="online")["user_ids"] == [w2]

    c3.connect(node, auth, w3)
    c3.signin()
    c3.expect_event("signin_success")
    assert c1.expect_event("watchlist", name="online")["user_ids"] == [w3]
    c3.disconnect()
    assert c1.expect_event("watchlist", name="offline")["user_ids"] == [w3]


def test_force_reconnect_reconnects_at_once_with_a_new_socket_id(
    node: NodeProcess, clients: Clients, auth: AuthServer, api: SignedClient, sdk: pusher.Pusher
) -> None:
    user = f"user-{uid()}"
    auth.add_user(user)
    channel = f"orders-{uid()}"
    a = clients("a")
    old = a.connect(node, auth, user)
    a.subscribe(channel)
    a.signin()
    a.expect_event("signin_success")

    user_request(api, user, "force_reconnect")
    a.expect(is_error(4200))
    a.expect_event("state", previous="connected", current="connecting", timeout=5)
    reconnected = a.expect_event("state", previous="connecting", current="connected", timeout=5)
    assert reconnected["socket_id"] != old
    assert SOCKET_ID.fullmatch(reconnected["socket_id"])
    # pusher-js resubscribes and signs in again on the new connection.
    a.expect_event("subscription_succeeded", channel=channel)
    assert a.expect_event("signin_success")["user_data"] == {"id": user}
    sdk.trigger(channel, "after", {"ok": True})
    assert a.expect(channel_event(channel, "after"))["data"] == {"ok": True}


@pytest.mark.parametrize("via", ["http-api", "pusher-sdk-alias"])
def test_terminate_connections_disconnects_the_user_for_good(
    via: str,
    node: NodeProcess,
    clients: Clients,
    auth: AuthServer,
    api: SignedClient,
    sdk: pusher.Pusher,
) -> None:
    user, bystander = f"user-{uid()}", f"user-{uid()}"
    auth.add_user(user)
    auth.add_user(bystander)
    channel = f"orders-{uid()}"
    a, b = clients("a"), clients("b")
    a.connect(node, auth, user)
    b_socket = b.connect(node, auth, bystander)
    for client in (a, b):
        client.subscribe(channel)
        client.signin()
        client.expect_event("signin_success")

    if via == "http-api":
        user_request(api, user, "terminate_connections")
    else:
        # pusher 3.3.4 posts to the un-prefixed alias /users/{id}/terminate_connections.
        assert sdk.terminate_user_connections(user) == {}
    a.expect(is_error(4009))
    a.expect_event("state", previous="connected", current="disconnected")
    # 4009 is in pusher-js's "refused" range: it does not come back.
    a.assert_no(matcher("state", current="connecting"), wait=2.0)

    assert b.state() == ("connected", b_socket)
    b.assert_no(matcher("error"), wait=0)
    sdk.trigger(channel, "still-here", "yes")
    assert b.expect(channel_event(channel, "still-here"))["data"] == "yes"
