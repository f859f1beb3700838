"""Capability tokens end to end (spec 02 §11, acceptance check 56) on both log backends.

A real node on loopback, raw V2 JSON WebSockets, tokens minted with PyJWT as an application
backend would, revocations through the signed HTTP API. The last test runs two nodes on one
Kafka cluster: a revocation sent to one node closes the token's socket on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from sockudo.auth import sign_channel_auth, sign_user_auth
from tests.support.api import SignedClient
from tests.support.kafka_broker import delete_topics_with_prefix, run_async
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess, running_node
from tests.support.tokens import capability_token
from tests.support.ws import (
    BACKENDS,
    TIMEOUT,
    closed_with,
    node_for_backend,
    nothing_more,
    publish,
    recv,
    recv_until,
    ws_url,
)


@pytest.fixture(scope="module", params=BACKENDS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    yield from node_for_backend(request, Path(tmp_path_factory.mktemp("tokens")) / "node")


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[SignedClient]:
    client = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    yield client
    client.close()


def uid() -> str:
    return uuid.uuid4().hex[:8]


def v2_url(node: NodeProcess, token: str | None = None) -> str:
    query = "protocol=2&format=json"
    if token is not None:
        query += f"&token={quote(token)}"
    return ws_url(node, query=query)


async def send(
    ws: ClientConnection, event: str, data: Any = None, channel: str | None = None
) -> None:
    frame: dict[str, Any] = {"event": event, "data": data if data is not None else {}}
    if channel is not None:
        frame["channel"] = channel
    await ws.send(json.dumps(frame))


async def established(ws: ClientConnection) -> str:
    frame = await recv(ws)
    assert frame["event"] == "sockudo:connection_established", frame
    return str(json.loads(frame["data"])["socket_id"])


@contextlib.asynccontextmanager
async def token_socket(
    node: NodeProcess, token: str
) -> AsyncIterator[tuple[ClientConnection, str]]:
    async with connect(v2_url(node, token)) as ws:
        yield ws, await established(ws)


async def subscribe(ws: ClientConnection, channel: str, **extra: Any) -> dict[str, Any]:
    await send(ws, "sockudo:subscribe", {"channel": channel, "auth": "", **extra})
    return await recv_until(ws, lambda f: f["event"] != "sockudo:ping")


async def alive(ws: ClientConnection) -> None:
    """The connection is open and answering."""
    await send(ws, "sockudo:ping")
    assert (await recv_until(ws, lambda f: f["event"] == "sockudo:pong"))["event"] == "sockudo:pong"


def denial(action: str, channel: str) -> dict[str, Any]:
    return {
        "event": "sockudo:error",
        "channel": channel,
        "data": {
            "code": 4009,
            "message": f"Authentication error: Connection is not allowed to {action} channel "
            f"'{channel}'",
        },
    }


def revoke(api: SignedClient, body: dict[str, Any]) -> httpx.Response:
    return api.request("POST", f"/apps/{APP_ID}/revocations", body=json.dumps(body).encode())


# --- connect -------------------------------------------------------------------------------------


async def test_a_token_grants_exactly_its_channels(node: NodeProcess) -> None:
    tag = uid()
    token = capability_token({f"orders-{tag}-*": ["subscribe"]})
    async with token_socket(node, token) as (ws, _sid):
        ok = await subscribe(ws, f"orders-{tag}-1")
        assert ok["event"] == "sockudo_internal:subscription_succeeded"
        assert await subscribe(ws, f"invoices-{tag}") == denial("subscribe", f"invoices-{tag}")
        # A denial is in-band: the connection stays usable.
        ok = await subscribe(ws, f"orders-{tag}-2")
        assert ok["event"] == "sockudo_internal:subscription_succeeded"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda: capability_token({"*": ["subscribe"]}, secret="wrong-secret"),
            "capability token signature or claims are invalid",
        ),
        (
            lambda: capability_token({"*": ["subscribe"]}, kid="other-key"),
            "capability token kid does not match app key",
        ),
        (
            lambda: capability_token({"*": ["subscribe"]}, iat=int(time.time()) - 4000),
            "capability token is expired",
        ),
        (lambda: capability_token({"*": ["fly"]}), "unsupported capability operation 'fly'"),
        (lambda: "not-a-jwt", "capability token has an invalid header"),
    ],
)
async def test_a_refused_token_gets_4009_before_connection_established(
    node: NodeProcess, make: Any, reason: str
) -> None:
    async with connect(v2_url(node, make())) as ws:
        frame = await recv(ws)
        assert frame == {
            "event": "sockudo:error",
            "data": {"code": 4009, "message": f"Authentication error: {reason}"},
        }
        assert await closed_with(ws) == 4009


async def test_pusher_auth_on_v1_is_refused_4009(node: NodeProcess) -> None:
    """Acceptance check 56, V1 half."""
    async with connect(ws_url(node)) as ws:
        await recv(ws)  # connection_established
        await ws.send(json.dumps({"event": "pusher:auth", "data": {"token": "x"}}))
        frame = await recv(ws)
        assert frame["event"] == "pusher:error"
        assert frame["data"]["code"] == 4009
        await ws.send(json.dumps({"event": "pusher:ping", "data": {}}))
        assert (await recv(ws))["event"] == "pusher:pong"


# --- refresh -------------------------------------------------------------------------------------


async def test_refresh_replaces_the_token_and_a_bad_one_is_not_fatal(node: NodeProcess) -> None:
    """Acceptance check 56, V2 half, plus the successful refresh."""
    tag = uid()
    client = f"client-{tag}"
    first = capability_token({f"a-{tag}": ["subscribe"]}, client_id=client, jti=f"j1-{tag}")
    async with token_socket(node, first) as (ws, _sid):
        await send(ws, "sockudo:auth", {"token": "garbage"})
        frame = await recv(ws)
        assert frame["event"] == "sockudo:error"
        assert frame["data"]["code"] == 4009
        assert frame["data"]["message"].startswith("Authentication error: ")
        await alive(ws)
        assert (await subscribe(ws, f"a-{tag}"))["event"].endswith("subscription_succeeded")

        second = capability_token({f"b-{tag}": ["subscribe"]}, client_id=client, jti=f"j2-{tag}")
        # data as a JSON string, as some clients send it
        await send(ws, "sockudo:auth", json.dumps({"token": second}))
        ok = await recv(ws)
        assert ok["event"] == "sockudo:auth_success"
        assert ok["data"]["client_id"] == client
        assert ok["data"]["jti"] == f"j2-{tag}"
        assert abs(ok["data"]["exp"] - (time.time() + 3600)) < 60
        assert (await subscribe(ws, f"b-{tag}"))["event"].endswith("subscription_succeeded")
        assert await subscribe(ws, f"c-{tag}") == denial("subscribe", f"c-{tag}")

        stranger = capability_token({"*": ["subscribe"]}, client_id="someone-else")
        await send(ws, "sockudo:auth", {"token": stranger})
        frame = await recv(ws)
        assert frame["data"] == {
            "code": 4009,
            "message": "Authentication error: capability token refresh cannot change client_id",
        }
        assert await subscribe(ws, f"z-{tag}") == denial("subscribe", f"z-{tag}")


# --- the gates -----------------------------------------------------------------------------------


async def test_client_events_need_publish(node: NodeProcess) -> None:
    channel = f"private-chat-{uid()}"
    reader_token = capability_token({channel: ["subscribe"]})
    writer_token = capability_token({channel: ["subscribe", "publish"]})
    async with (
        token_socket(node, reader_token) as (reader, rsid),
        token_socket(node, writer_token) as (writer, wsid),
    ):
        for ws, sid in ((reader, rsid), (writer, wsid)):
            auth = sign_channel_auth(APP_KEY, APP_SECRET, sid, channel)
            ok = await subscribe(ws, channel, auth=auth)
            assert ok["event"] == "sockudo_internal:subscription_succeeded"
        await send(reader, "client-typing", {"who": "reader"}, channel)
        assert await recv(reader) == denial("publish", channel)
        await send(writer, "client-typing", {"who": "writer"}, channel)
        got = await recv_until(reader, lambda f: f["event"] == "client-typing")
        assert got["data"] == {"who": "writer"}
        # The writer sees its own event (V2 echo) and never the reader's refused one.
        echo = await recv_until(writer, lambda f: f["event"] == "client-typing")
        assert echo["data"] == {"who": "writer"}
        await nothing_more(writer, 0.5)


async def test_history_presence_and_rewind_need_their_grants(
    node: NodeProcess, api: SignedClient
) -> None:
    tag = uid()
    feed, room = f"feed-{tag}", f"presence-room-{tag}"
    await publish(api, {"name": "m", "channel": feed, "data": "x1"})
    token = capability_token({feed: ["subscribe"], room: ["subscribe"]}, client_id="u1")
    async with token_socket(node, token) as (ws, sid):
        assert await subscribe(ws, feed, rewind=1) == denial("history", feed)
        assert (await subscribe(ws, feed))["event"].endswith("subscription_succeeded")
        await send(ws, "sockudo:channel_history", {"channel": feed, "limit": 10})
        assert await recv(ws) == denial("history", feed)
        data = json.dumps({"user_id": "u1"})
        auth = sign_channel_auth(APP_KEY, APP_SECRET, sid, room, data)
        assert await subscribe(ws, room, auth=auth, channel_data=data) == denial("presence", room)

    full = capability_token({feed: ["subscribe", "history"]}, client_id="u1")
    async with token_socket(node, full) as (ws, _sid):
        ok = await subscribe(ws, feed, rewind=1)
        assert ok["event"] == "sockudo_internal:subscription_succeeded"
        replayed = await recv(ws)
        assert (replayed["event"], replayed["data"]) == ("m", "x1")


async def test_the_client_id_is_the_socket_identity(node: NodeProcess, api: SignedClient) -> None:
    client = f"user-{uid()}"
    token = capability_token({"*": ["subscribe"]}, client_id=client)
    async with token_socket(node, token) as (ws, sid):
        user_data = json.dumps({"id": client})
        auth = sign_user_auth(APP_KEY, APP_SECRET, sid, user_data)
        await send(ws, "sockudo:signin", {"auth": auth, "user_data": user_data})
        refused = await recv(ws)
        assert refused["data"]["code"] == 4009
        assert "signin is not allowed" in refused["data"]["message"]
        # user channels reach the token's client id ...
        await publish(api, {"name": "note", "channel": f"#server-to-user-{client}", "data": "hi"})
        note = await recv_until(ws, lambda f: f["event"] == "note")
        assert note["data"] == "hi"
        # ... and terminate_connections closes it.
        response = await asyncio.to_thread(
            api.request, "POST", f"/apps/{APP_ID}/users/{client}/terminate_connections"
        )
        assert response.status_code == 200
        assert await closed_with(ws) == 4009


# --- expiry --------------------------------------------------------------------------------------


async def test_expiry_warns_and_a_refresh_keeps_the_connection(node: NodeProcess) -> None:
    tag = uid()
    client = f"c-{tag}"
    short = capability_token({"*": ["subscribe"]}, client_id=client, ttl_s=2)
    async with token_socket(node, short) as (ws, _sid):
        started = time.monotonic()
        expired = await recv_until(ws, lambda f: f["event"] == "sockudo:token_expired", wait=8)
        assert expired["data"] == {"code": 40142, "reason": "expired"}
        assert time.monotonic() - started > 0.5  # at exp, not at once
        await send(
            ws, "sockudo:auth", {"token": capability_token({"*": ["subscribe"]}, client_id=client)}
        )
        ok = await recv_until(ws, lambda f: f["event"] == "sockudo:auth_success")
        assert ok["data"]["client_id"] == client
        await alive(ws)


@pytest.fixture(scope="module")
def embedded_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with running_node(NodeProcess(Path(tmp_path_factory.mktemp("tokens-expiry")) / "node")) as node:
        yield node


@pytest.mark.slow
async def test_without_a_refresh_the_connection_closes_30s_after_expiry(
    embedded_node: NodeProcess,
) -> None:
    # The expiry timer is node-local, not log-backed: one backend covers it.
    node = embedded_node
    # exp 25 s ago is still within the 30 s skew: accepted, expired at once, closed 30 s later.
    now = int(time.time())
    token = capability_token({"*": ["subscribe"]}, iat=now - 60, ttl_s=35)
    async with token_socket(node, token) as (ws, _sid):
        expired = await recv(ws)
        assert expired == {
            "event": "sockudo:token_expired",
            "data": {"code": 40142, "reason": "expired"},
        }
        started = time.monotonic()
        error = await recv_until(ws, lambda f: f["event"] == "sockudo:error", wait=40)
        assert error["data"] == {"code": 4009, "message": "capability token expired"}
        assert await closed_with(ws) == 4009
        assert 28 < time.monotonic() - started < 35


# --- revocation ----------------------------------------------------------------------------------


async def test_revoking_a_jti_closes_its_sockets_and_refuses_it_later(
    node: NodeProcess, api: SignedClient
) -> None:
    tag = uid()
    doomed = capability_token({"*": ["subscribe"]}, client_id=f"a-{tag}", jti=f"ja-{tag}")
    kept = capability_token({"*": ["subscribe"]}, client_id=f"a-{tag}", jti=f"jb-{tag}")
    async with token_socket(node, doomed) as (a, _), token_socket(node, kept) as (b, _):
        response = await asyncio.to_thread(revoke, api, {"jti": f"ja-{tag}", "reason": "leaked"})
        assert response.status_code == 200, response.text
        assert response.json() == {
            "revoked_jti": True,
            "revoked_client_id": False,
            "closed_connections": 1,
        }
        assert await recv(a) == {
            "event": "sockudo:token_expired",
            "data": {"code": 40160, "reason": "revoked"},
        }
        assert (await recv(a))["data"] == {"code": 4009, "message": "capability token revoked"}
        assert await closed_with(a) == 4009
        await alive(b)

        # The revoked token cannot connect or be refreshed into again.
        async with connect(v2_url(node, doomed)) as again:
            assert (await recv(again))["data"] == {
                "code": 4009,
                "message": "Authentication error: capability token has been revoked",
            }
            assert await closed_with(again) == 4009
        await send(b, "sockudo:auth", {"token": doomed})
        assert (await recv(b))["data"]["message"].endswith("has been revoked")
        await alive(b)


async def test_revoking_a_client_id_closes_every_token_of_it(
    node: NodeProcess, api: SignedClient
) -> None:
    tag = uid()
    victim, other = f"v-{tag}", f"o-{tag}"
    t1 = capability_token({"*": ["subscribe"]}, client_id=victim)
    t2 = capability_token({"*": ["subscribe"]}, client_id=victim)
    t3 = capability_token({"*": ["subscribe"]}, client_id=other)
    async with (
        token_socket(node, t1) as (s1, _),
        token_socket(node, t2) as (s2, _),
        token_socket(node, t3) as (s3, _),
    ):
        response = await asyncio.to_thread(revoke, api, {"client_id": victim, "ttl_seconds": 60})
        assert response.json() == {
            "revoked_jti": False,
            "revoked_client_id": True,
            "closed_connections": 2,
        }
        for ws in (s1, s2):
            assert (await recv(ws))["data"] == {"code": 40160, "reason": "revoked"}
            assert await closed_with(ws) == 4009
        await alive(s3)
    fresh = capability_token({"*": ["subscribe"]}, client_id=victim)
    async with connect(v2_url(node, fresh)) as ws:
        assert (await recv(ws))["data"]["message"].endswith("has been revoked")


async def test_a_revocation_needs_a_target_and_a_signature(
    node: NodeProcess, api: SignedClient
) -> None:
    response = await asyncio.to_thread(revoke, api, {"reason": "nothing named"})
    assert response.status_code == 400
    assert response.json() == {
        "error": "revocation requires jti or client_id",
        "code": "invalid_input",
        "status": 400,
    }
    forged = await asyncio.to_thread(
        api.request,
        "POST",
        f"/apps/{APP_ID}/revocations",
        body=b'{"jti":"x"}',
        secret="not-the-secret",
    )
    assert forged.status_code == 401


# --- two nodes -----------------------------------------------------------------------------------


@pytest.mark.kafka
async def test_a_revocation_on_one_node_closes_the_socket_on_another(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    nodes = [
        NodeProcess(
            tmp_path / node_id,
            log_backend="kafka",
            kafka_bootstrap=kafka_bootstrap,
            topic_prefix=prefix,
            channel_partitions=3,
            node_id=node_id,
        )
        for node_id in ("node-a", "node-b")
    ]
    api = None
    try:
        for n in nodes:
            n.start()
        a, b = nodes
        api = SignedClient(a.base_url, APP_ID, APP_KEY, APP_SECRET)
        token = capability_token({"*": ["subscribe"]}, client_id="roamer", jti="j-roam")
        async with token_socket(b, token) as (ws, _sid):
            response = await asyncio.to_thread(revoke, api, {"jti": "j-roam"})
            # node A served the request and has none of the token's sockets
            assert response.json()["closed_connections"] == 0
            assert (await recv(ws))["data"] == {"code": 40160, "reason": "revoked"}
            assert await closed_with(ws, TIMEOUT) == 4009
        async with connect(v2_url(b, token)) as again:
            assert (await recv(again))["data"]["message"].endswith("has been revoked")
    finally:
        if api is not None:
            api.close()
        for n in nodes:
            n.kill()
        with contextlib.suppress(Exception):
            run_async(lambda: delete_topics_with_prefix(kafka_bootstrap, prefix))


# --- durability ----------------------------------------------------------------------------------


async def test_revocations_survive_a_restart_and_rebuild_identically(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node")
    node.start()
    api = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    try:
        token = capability_token({"*": ["subscribe"]}, client_id="durable", jti="j-durable")
        for body in ({"jti": "j-durable"}, {"client_id": "someone", "ttl_seconds": 1}):
            response = await asyncio.to_thread(revoke, api, body)
            assert response.status_code == 200, response.text
        assert node.stop() == 0
        rebuilt = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "tools.cli", "rebuild", "--verify", *node.tools_args()],
            env=node.tools_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        assert "identical" in rebuilt.stdout
        node.start()
        async with connect(v2_url(node, token)) as ws:
            assert (await recv(ws))["data"]["message"].endswith("has been revoked")
            assert await closed_with(ws) == 4009
    finally:
        api.close()
        node.kill()
