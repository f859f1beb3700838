"""Spec 02 §5.8 end to end: wildcard subscriptions and ``[meta]`` channels on a real node.

Raw sockets against a node on each log backend; frames decoded with ``sockudo.ws.wire``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from sockudo.auth import sign_channel_auth
from sockudo.ws import wire
from tests.support.api import SignedClient
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess
from tests.support.ws import BACKENDS, TIMEOUT, node_for_backend, publish, ws_url

QUIET = 0.4
"""How long "nothing more arrives" is watched for."""


@pytest.fixture(scope="module", params=BACKENDS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    yield from node_for_backend(request, Path(tmp_path_factory.mktemp("wildcard")) / "node")


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[SignedClient]:
    client = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    yield client
    client.close()


class Client:
    """A raw V2 connection in one wire format."""

    def __init__(self, ws: ClientConnection, fmt: wire.WireFormat) -> None:
        self.ws = ws
        self.fmt = fmt
        self.socket_id = ""

    async def recv(self, wait: float = TIMEOUT) -> wire.Envelope:
        return wire.decode(await asyncio.wait_for(self.ws.recv(), wait), self.fmt)

    async def send(self, event: str, data: Any = None, channel: str | None = None) -> None:
        env = wire.Envelope(
            event=event, channel=channel, data=None if data is None else wire.Data.of_value(data)
        )
        await self.ws.send(wire.encode(env, self.fmt))

    async def subscribe(self, channel: str, **extra: Any) -> wire.Envelope:
        await self.send("sockudo:subscribe", {"channel": channel, "auth": "", **extra})
        return await self.recv()

    async def nothing_more(self) -> None:
        try:
            env = await self.recv(QUIET)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {env}")


@asynccontextmanager
async def v2(node: NodeProcess, fmt: wire.WireFormat = "json") -> AsyncIterator[Client]:
    async with connect(ws_url(node, query=f"protocol=2&format={fmt}")) as ws:
        c = Client(ws, fmt)
        hello = await c.recv()
        assert hello.event == "sockudo:connection_established"
        assert hello.data is not None
        c.socket_id = json.loads(str(hello.data.value))["socket_id"]
        yield c


def data_of(env: wire.Envelope) -> Any:
    assert env.data is not None
    value = env.data.to_value()
    return json.loads(value) if isinstance(value, str) else value


def error_code(env: wire.Envelope) -> int:
    assert env.event == "sockudo:error", env
    code: int = data_of(env)["code"]
    return code


# --- wildcard subscriptions ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "msgpack", "protobuf"])
async def test_pattern_delivers_matching_public_channels_with_their_metadata(
    node: NodeProcess, api: SignedClient, fmt: wire.WireFormat
) -> None:
    prefix = f"wc1-{fmt}-"
    async with v2(node, fmt) as c:
        ack = await c.subscribe(prefix + "*")
        assert ack.event == "sockudo_internal:subscription_succeeded"
        assert ack.channel == prefix + "*"
        assert (ack.serial, ack.stream_id) == (None, None)  # no stream of its own
        eu = await publish(
            api,
            {
                "name": "e",
                "channel": prefix + "eu",
                "data": '{"n":1}',
                "info": "subscription_count",
            },
        )
        await publish(api, {"name": "e", "channel": f"other-{fmt}", "data": "x"})
        await publish(api, {"name": "e", "channel": prefix + "us", "data": '{"n":2}'})
        first, second = await c.recv(), await c.recv()
        assert (first.event, first.channel, data_of(first)) == ("e", prefix + "eu", {"n": 1})
        ack_eu = eu["channels"][prefix + "eu"]
        assert first.message_id == ack_eu["message_id"]
        assert first.stream_id == ack_eu["stream_id"]
        assert first.serial == ack_eu["delivery_serial"] == 1
        # A pattern subscriber is not a subscriber of the concrete channel.
        assert ack_eu["subscription_count"] == 0
        assert (second.channel, second.serial) == (prefix + "us", 1)
        await c.nothing_more()


async def test_overlap_delivers_once_and_pattern_filters_apply(
    node: NodeProcess, api: SignedClient
) -> None:
    async with v2(node) as c:
        await c.subscribe("wc2-orders")
        await c.subscribe("wc2-*", filter={"events": ["keep"]})
        await c.subscribe("*-orders")
        for event in ("keep", "drop"):
            await publish(api, {"name": event, "channel": "wc2-orders", "data": "a"})
            await publish(api, {"name": event, "channel": "wc2-invoices", "data": "b"})
        got = [await c.recv() for _ in range(3)]
        assert [(e.event, e.channel) for e in got] == [
            ("keep", "wc2-orders"),
            ("keep", "wc2-invoices"),
            ("drop", "wc2-orders"),  # through the channel itself, which has no filter
        ]
        await c.nothing_more()


async def test_unsubscribe_from_a_pattern(node: NodeProcess, api: SignedClient) -> None:
    async with v2(node) as c:
        await c.subscribe("wc3-*")
        await publish(api, {"name": "e", "channel": "wc3-a", "data": "1"})
        assert (await c.recv()).channel == "wc3-a"
        await c.send("sockudo:unsubscribe", {"channel": "wc3-*"})
        await publish(api, {"name": "e", "channel": "wc3-a", "data": "2"})
        await c.nothing_more()


async def test_client_events_reach_pattern_subscribers_of_public_channels_only(
    node: NodeProcess,
) -> None:
    async with v2(node) as sender, v2(node) as watcher:
        await watcher.subscribe("*")
        channel = "private-wc4"
        auth = sign_channel_auth(APP_KEY, APP_SECRET, sender.socket_id, channel)
        assert (await sender.subscribe(channel, auth=auth)).serial is not None
        await sender.send("client-x", {"a": 1}, channel=channel)
        assert (await sender.recv()).event == "client-x"  # the V2 sender's echo
        await watcher.nothing_more()  # private channels never match a pattern


@pytest.mark.parametrize(
    ("extra", "code"),
    [({"rewind": 3}, 4300), ({"rewind": "x"}, 4000), ({"filter": {"events": "x"}}, 4000)],
)
async def test_rejected_pattern_subscribe_creates_nothing(
    node: NodeProcess, api: SignedClient, extra: dict[str, Any], code: int
) -> None:
    async with v2(node) as c:
        reply = await c.subscribe("wc5-*", **extra)
        assert error_code(reply) == code
        assert reply.channel == "wc5-*"
        await publish(api, {"name": "e", "channel": "wc5-a", "data": "1"})
        await c.nothing_more()


@pytest.mark.parametrize("name", ["wc6-**", "private-*", "wc6#x*", "[meta]bad*"])
async def test_invalid_targets_are_4300(node: NodeProcess, name: str) -> None:
    async with v2(node) as c:
        assert error_code(await c.subscribe(name)) == 4300


@pytest.mark.parametrize("name", ["wc7-*", "[meta]wc7"])
async def test_v1_gets_4300_for_v2_only_targets(node: NodeProcess, name: str) -> None:
    async with connect(ws_url(node)) as ws:
        await ws.recv()
        await ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": name}}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert frame["event"] == "pusher:error"
        assert (frame["channel"], frame["data"]["code"]) == (name, 4300)


async def test_no_history_or_resume_on_a_pattern(node: NodeProcess, api: SignedClient) -> None:
    async with v2(node) as c:
        await c.subscribe("wc8-*")
        await c.send("sockudo:channel_history", {"channel": "wc8-*"})
        assert error_code(await c.recv()) == 4300
        await c.send("sockudo:resume", {"channel_positions": {"wc8-*": {"serial": 1}}})
        failed, summary = await c.recv(), await c.recv()
        assert failed.event == "sockudo:resume_failed"
        assert data_of(failed)["channel"] == "wc8-*"
        assert summary.event == "sockudo:resume_success"
        assert [f["channel"] for f in data_of(summary)["failed"]] == ["wc8-*"]
        # The subscription keeps working.
        await publish(api, {"name": "e", "channel": "wc8-a", "data": "1"})
        assert (await c.recv()).channel == "wc8-a"


async def test_http_publish_to_a_pattern_is_refused(api: SignedClient) -> None:
    for name in ("wc9-*", "[meta]wc9"):
        response = await asyncio.to_thread(api.publish, {"name": "e", "channel": name, "data": "x"})
        assert response.status_code == 400, response.text


# --- meta channels ------------------------------------------------------------------------------


def meta_event(env: wire.Envelope) -> tuple[str | None, str | None, Any]:
    return env.event, env.channel, data_of(env)


async def test_meta_channel_reports_occupancy_and_subscription_counts(node: NodeProcess) -> None:
    meta = "[meta]wc10"
    async with v2(node, "msgpack") as watcher:
        ack = await watcher.subscribe(meta)
        assert ack.event == "sockudo_internal:subscription_succeeded"
        assert (ack.serial, ack.stream_id) == (None, None)
        async with v2(node) as a:
            await a.subscribe("wc10")
            async with connect(ws_url(node)) as v1_ws:  # a V1 subscriber counts as well
                await v1_ws.recv()
                await v1_ws.send(
                    json.dumps({"event": "pusher:subscribe", "data": {"channel": "wc10"}})
                )
                await v1_ws.recv()
                await a.send("sockudo:unsubscribe", {"channel": "wc10"})
            # The V1 socket disconnected: its subscription ended with it.
        got = [meta_event(await watcher.recv()) for _ in range(6)]
        count = "sockudo_internal:subscription_count"
        assert got == [
            ("sockudo_internal:channel_occupied", meta, {"channel": "wc10"}),
            (count, meta, {"channel": "wc10", "subscription_count": 1}),
            (count, meta, {"channel": "wc10", "subscription_count": 2}),
            (count, meta, {"channel": "wc10", "subscription_count": 1}),
            (count, meta, {"channel": "wc10", "subscription_count": 0}),
            ("sockudo_internal:channel_vacated", meta, {"channel": "wc10"}),
        ]
        await watcher.send("sockudo:unsubscribe", {"channel": meta})
        async with v2(node) as b:
            await b.subscribe("wc10")
        await watcher.nothing_more()


async def test_meta_channel_of_a_presence_channel(node: NodeProcess) -> None:
    channel = "presence-wc11"
    meta = "[meta]" + channel
    async with v2(node) as watcher, v2(node) as member:
        assert error_code(await watcher.subscribe(meta)) == 4009  # not public: signed
        auth = sign_channel_auth(APP_KEY, APP_SECRET, watcher.socket_id, meta)
        ack = await watcher.subscribe(meta, auth=auth)
        assert ack.event == "sockudo_internal:subscription_succeeded"

        channel_data = json.dumps({"user_id": "u11"})
        member_auth = sign_channel_auth(
            APP_KEY, APP_SECRET, member.socket_id, channel, channel_data
        )
        joined = await member.subscribe(channel, auth=member_auth, channel_data=channel_data)
        assert joined.event == "sockudo_internal:subscription_succeeded"
        await member.send("sockudo:presence_update", {"user_info": {"s": 1}}, channel=channel)
        assert (await member.recv()).event == "sockudo_internal:presence_update"
        await member.send("sockudo:unsubscribe", {"channel": channel})

        got = [meta_event(await watcher.recv()) for _ in range(7)]
        update = "sockudo_internal:presence_update"
        presence = [d for e, _, d in got if e == update]
        assert presence == [
            {"channel": channel, "user_id": "u11", "action": action}
            for action in ("member_added", "member_updated", "member_removed")
        ]
        assert {ch for _, ch, _ in got} == {meta}
        others = [(e, d) for e, _, d in got if e != update]
        assert others == [
            ("sockudo_internal:channel_occupied", {"channel": channel}),
            ("sockudo_internal:subscription_count", {"channel": channel, "subscription_count": 1}),
            ("sockudo_internal:subscription_count", {"channel": channel, "subscription_count": 0}),
            ("sockudo_internal:channel_vacated", {"channel": channel}),
        ]
        await watcher.nothing_more()
