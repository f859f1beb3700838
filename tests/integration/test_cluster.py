"""Two nodes on one Kafka cluster: shared serials, cross-node fanout and presence, node death.

Two ``sockudo-node`` processes with different node ids and ports share one broker and one topic
prefix. Each folds every ``channel-events`` partition and fans out to its own sockets; presence
is folded from the log on both; heartbeats on ``nodes`` let the cleaner declare a silent node
dead and the dead node fence itself (spec 05 §9, acceptance checks 24, 25, 32, 38, 40-44).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from projections.folds.state import HistoryRow
from projections.store import keys
from projections.store.rocks import ProjectionStore
from sockudo.events import codec
from sockudo.events.channel import Origin
from sockudo.events.presence import PresenceMemberJoined
from sockudo.log.partitioning import channel_key, partition_for
from sockudo.ws import wire
from tests.support.api import SignedClient
from tests.support.kafka_broker import delete_topics_with_prefix, run_async
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess
from tests.support.ws import (
    TIMEOUT,
    closed_with,
    established,
    nothing_more,
    presence_of,
    recv,
    recv_until,
    subscribe_presence,
    subscribe_private,
    ws_url,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 3


@dataclass
class Cluster:
    a: NodeProcess
    b: NodeProcess
    api_a: SignedClient
    api_b: SignedClient


@contextlib.contextmanager
def running_pair(
    root: Path, bootstrap: str, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """Nodes ``node-a`` and ``node-b`` on one fresh topic prefix; topics deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def node(node_id: str) -> NodeProcess:
        return NodeProcess(
            root / node_id,
            log_backend="kafka",
            kafka_bootstrap=bootstrap,
            topic_prefix=prefix,
            channel_partitions=PARTITIONS,
            node_id=node_id,
            extra_env=dict(env or {}),
        )

    a, b = node("node-a"), node("node-b")
    apis: list[SignedClient] = []
    try:
        a.start()  # A creates the topics; B then finds them
        b.start()
        apis = [SignedClient(n.base_url, APP_ID, APP_KEY, APP_SECRET) for n in (a, b)]
        yield Cluster(a, b, apis[0], apis[1])
    finally:
        for api in apis:
            api.close()
        for n in (a, b):
            if n.proc is not None and n.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(n.proc.pid, signal.SIGCONT)
            n.kill()
        with contextlib.suppress(Exception):
            run_async(lambda: delete_topics_with_prefix(bootstrap, prefix))


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_pair(tmp_path_factory.mktemp("cluster"), kafka_bootstrap) as pair:
        yield pair


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


async def v1(stack: AsyncExitStack, node: NodeProcess) -> tuple[ClientConnection, str]:
    ws = await stack.enter_async_context(connect(ws_url(node)))
    return ws, await established(ws)


async def v2(stack: AsyncExitStack, node: NodeProcess) -> ClientConnection:
    ws = await stack.enter_async_context(connect(ws_url(node, query="protocol=2&format=json")))
    opening = await v2_recv(ws)
    assert opening.event == "sockudo:connection_established"
    return ws


async def v2_recv(ws: ClientConnection, wait: float = TIMEOUT) -> wire.Envelope:
    return wire.decode(await asyncio.wait_for(ws.recv(), wait), "json")


async def v2_subscribe(ws: ClientConnection, channel: str) -> wire.Envelope:
    frame = wire.Envelope(
        event="sockudo:subscribe",
        data=wire.Data.of_value({"channel": channel, "auth": ""}),
    )
    await ws.send(wire.encode(frame, "json"))
    ack = await v2_recv(ws)
    assert ack.event == "sockudo_internal:subscription_succeeded", ack
    return ack


def publish(api: SignedClient, channel: str, data: str, **extra: Any) -> dict[str, Any]:
    """Publish with ``info``; the channel's acknowledgement (spec 01 §5.1)."""
    r = api.publish(
        {"name": "ev", "channel": channel, "data": data, "info": "subscription_count", **extra}
    )
    assert r.status_code == 200, r.text
    ack: dict[str, Any] = r.json()["channels"][channel]
    return ack


async def apublish(api: SignedClient, channel: str, data: str, **extra: Any) -> dict[str, Any]:
    return await asyncio.to_thread(publish, api, channel, data, **extra)


def history_items(api: SignedClient, channel: str) -> list[dict[str, Any]]:
    """Every retained item of ``channel``, oldest first, across pages."""
    items: list[dict[str, Any]] = []
    params = {"direction": "oldest_first", "limit": "100"}
    while True:
        r = api.history(channel, **params)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        if not page["has_more"]:
            return items
        params["cursor"] = page["next_cursor"]


def wait_history(api: SignedClient, channel: str, count: int) -> list[dict[str, Any]]:
    """``channel``'s history once it holds ``count`` items (another node's fold may trail)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        items = history_items(api, channel)
        if len(items) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.05)


def reset(api: SignedClient, channel: str) -> dict[str, Any]:
    r = api.request(
        "POST",
        f"/apps/{APP_ID}/channels/{channel}/history/reset",
        body=json.dumps(
            {"confirm_operation": "reset", "confirm_channel": channel, "reason": "test"}
        ).encode(),
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def incarnation_of(node: NodeProcess) -> str:
    """The incarnation the node logged when it started listening."""
    found = re.findall(r"sockudo-node (\S+) listening", node.log_path.read_text(errors="replace"))
    assert found, node.tail()
    return str(found[-1])


# --- serials are shared (checks 24, 25, 32, 38) -----------------------------------------------


async def test_acks_history_and_live_frames_agree_across_nodes(
    cluster: Cluster, stack: AsyncExitStack
) -> None:
    """Check 24: serials acknowledged by A are the ones B serves and delivers."""
    channel = "chat-room"
    live = await v2(stack, cluster.b)
    await v2_subscribe(live, channel)
    acks = [await apublish(cluster.api_a, channel, f"m{i}") for i in range(3)]
    assert [a["history_serial"] for a in acks] == [1, 2, 3]
    stream_id = acks[0]["stream_id"]
    assert all(a["stream_id"] == stream_id for a in acks)

    frames = [await v2_recv(live) for _ in range(3)]
    assert [(f.event, f.serial, f.stream_id, f.message_id) for f in frames] == [
        ("ev", a["delivery_serial"], stream_id, a["message_id"]) for a in acks
    ]
    items = await asyncio.to_thread(wait_history, cluster.api_b, channel, 3)
    assert [(i["serial"], i["stream_id"], i["message_id"]) for i in items] == [
        (a["history_serial"], stream_id, a["message_id"]) for a in acks
    ]


def test_concurrent_publishes_on_both_nodes_get_one_gapless_sequence(cluster: Cluster) -> None:
    """Check 25: 100 publishes via each node at once → serials 1..200, same map on both."""
    channel = "both-sides"
    jobs = [
        (api, f"{name}{i}")
        for i in range(100)
        for name, api in (("a", cluster.api_a), ("b", cluster.api_b))
    ]
    with ThreadPoolExecutor(16) as pool:
        acks = list(pool.map(lambda job: publish(job[0], channel, job[1]), jobs))
    serials = sorted(a["history_serial"] for a in acks)
    assert serials == list(range(1, 201))
    by_serial = {a["history_serial"]: a["message_id"] for a in acks}
    assert len({a["stream_id"] for a in acks}) == 1

    on_a = wait_history(cluster.api_a, channel, 200)
    on_b = wait_history(cluster.api_b, channel, 200)
    assert {i["serial"]: i["message_id"] for i in on_a} == by_serial
    assert {i["serial"]: i["message_id"] for i in on_b} == by_serial


async def test_reset_via_one_node_starts_the_new_generation_on_both(
    cluster: Cluster, stack: AsyncExitStack
) -> None:
    """Check 32: a reset through A; the next publish (through B) is H = 1 everywhere."""
    channel = "reset-me"
    old = [await apublish(cluster.api_a, channel, f"old{i}") for i in range(2)]
    body = await asyncio.to_thread(reset, cluster.api_a, channel)
    new_stream = body["new_stream_id"]
    assert new_stream != old[0]["stream_id"]
    assert body["previous_stream_id"] == old[0]["stream_id"]

    ack = await apublish(cluster.api_b, channel, "new0")
    assert (ack["history_serial"], ack["delivery_serial"], ack["stream_id"]) == (1, 1, new_stream)
    for api in (cluster.api_a, cluster.api_b):
        items = await asyncio.to_thread(wait_history, api, channel, 1)
        assert [(i["serial"], i["stream_id"]) for i in items] == [(1, new_stream)]
        state = api.history_state(channel).json()["stream"]
        assert (state["stream_id"], state["next_serial"]) == (new_stream, 2)

    # A resume naming the old generation fails on the other node too.
    ws = await v2(stack, cluster.b)
    await v2_subscribe(ws, channel)
    resume = wire.Envelope(
        event="sockudo:resume",
        data=wire.Data.of_value(
            {"channel_positions": {channel: {"stream_id": old[0]["stream_id"], "serial": 2}}}
        ),
    )
    await ws.send(wire.encode(resume, "json"))
    failed = await v2_recv(ws)
    assert failed.event == "sockudo:resume_failed"
    assert failed.data is not None
    assert json.loads(str(failed.data.value))["code"] == "stream_reset"


def test_a_publish_is_in_the_same_nodes_history_at_once(cluster: Cluster) -> None:
    """Check 38: read-your-writes on the node that took the publish, on either node."""
    for name, api in (("a", cluster.api_a), ("b", cluster.api_b)):
        channel = f"ryw-{name}"
        for i in range(5):
            ack = publish(api, channel, f"{name}{i}")
            items = history_items(api, channel)
            assert items[-1]["message_id"] == ack["message_id"]
            assert items[-1]["serial"] == ack["history_serial"] == i + 1


# --- fanout across nodes (checks 40, 41) --------------------------------------------------------


async def test_a_v2_client_on_b_gets_a_publish_via_a_quickly(
    cluster: Cluster, stack: AsyncExitStack
) -> None:
    """Check 40: delivered on B within 250 ms, with the delivery_serial of A's answer."""
    channel = "latency"
    ws = await v2(stack, cluster.b)
    await v2_subscribe(ws, channel)
    await apublish(cluster.api_a, channel, "warm-up")  # first record: connections, metadata
    await v2_recv(ws)
    latencies = []
    for i in range(7):
        started = time.perf_counter()
        publishing = asyncio.ensure_future(apublish(cluster.api_a, channel, f"m{i}"))
        frame = await v2_recv(ws)
        latencies.append(time.perf_counter() - started)
        ack = await publishing
        assert (frame.serial, frame.stream_id, frame.message_id) == (
            ack["delivery_serial"],
            ack["stream_id"],
            ack["message_id"],
        )
    assert statistics.median(latencies) < 0.25, latencies


async def test_channel_state_counts_subscribers_on_every_node(
    cluster: Cluster, stack: AsyncExitStack
) -> None:
    """Spec 01 §6: channel state is cluster-wide, other nodes' sockets from their heartbeats
    (before: each node counted its own, so A said B's channel was not occupied)."""
    channel = "counted-everywhere"
    for node in (cluster.b, cluster.b, cluster.a):
        await v2_subscribe(await v2(stack, node), channel)

    def counts(api: SignedClient) -> tuple[Any, ...]:
        one = api.request(
            "GET",
            f"/apps/{APP_ID}/channels/{channel}",
            params={"info": "subscription_count"},
        ).json()
        listed = api.request(
            "GET", f"/apps/{APP_ID}/channels", params={"info": "subscription_count"}
        ).json()["channels"]
        published = publish(api, channel, "count")["subscription_count"]
        return one["occupied"], one["subscription_count"], listed.get(channel), published

    expected = (True, 3, {"subscription_count": 3}, 3)
    deadline = time.monotonic() + 20  # a heartbeat interval (5 s) and its fold
    seen: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        seen = [await asyncio.to_thread(counts, api) for api in (cluster.api_a, cluster.api_b)]
        if seen == [expected, expected]:
            break
        await asyncio.sleep(0.5)
    assert seen == [expected, expected]


async def test_client_events_and_socket_exclusion_cross_nodes(
    cluster: Cluster, stack: AsyncExitStack
) -> None:
    """Check 41: S's client event reaches subscribers on both nodes but not S; an HTTP trigger
    via B naming S (a socket of A) excludes S."""
    channel = "private-crossing"
    s, s_id = await v1(stack, cluster.a)
    peer_a, peer_a_id = await v1(stack, cluster.a)
    peer_b, peer_b_id = await v1(stack, cluster.b)
    for ws, sid in ((s, s_id), (peer_a, peer_a_id), (peer_b, peer_b_id)):
        ack = await subscribe_private(ws, sid, channel)
        assert ack["event"] == "pusher_internal:subscription_succeeded"

    await s.send(json.dumps({"event": "client-typing", "channel": channel, "data": {"x": 1}}))
    for peer in (peer_a, peer_b):
        got = await recv(peer)
        assert (got["event"], got["channel"], got["data"]) == (
            "client-typing",
            channel,
            {"x": 1},
        )
    await nothing_more(s)

    r = await asyncio.to_thread(
        cluster.api_b.publish,
        {"name": "server-ev", "channel": channel, "data": "d", "socket_id": s_id},
    )
    assert r.status_code == 200, r.text
    for peer in (peer_a, peer_b):
        assert (await recv(peer))["event"] == "server-ev"
    await nothing_more(s)


# --- presence across nodes (check 42) -----------------------------------------------------------


async def test_a_user_on_both_nodes_is_one_member(cluster: Cluster, stack: AsyncExitStack) -> None:
    """Check 42: u1 from A and from B → one member_added; the last connection removes it."""
    channel = "presence-lobby"
    observers = []
    for i, node in enumerate((cluster.a, cluster.b)):
        ws, sid = await v1(stack, node)
        presence_of(await subscribe_presence(ws, sid, channel, f"observer-{i}"))
        observers.append(ws)
    # The first observer saw the second join; nothing else is pending.
    added = await recv(observers[0])
    assert added["event"] == "pusher_internal:member_added"

    u1_a, u1_a_id = await v1(stack, cluster.a)
    joined = presence_of(await subscribe_presence(u1_a, u1_a_id, channel, "u1", {"n": 1}))
    assert joined["count"] == 3
    for ws in observers:
        got = await recv(ws)
        assert (got["event"], json.loads(got["data"])["user_id"]) == (
            "pusher_internal:member_added",
            "u1",
        )

    u1_b, u1_b_id = await v1(stack, cluster.b)
    again = presence_of(await subscribe_presence(u1_b, u1_b_id, channel, "u1", {"n": 2}))
    assert again["count"] == 3
    assert again["hash"]["u1"] == {"n": 1}  # first info wins
    for ws in observers:
        await nothing_more(ws, 0.5)

    await u1_a.close()
    for ws in observers:
        await nothing_more(ws, 0.7)

    await u1_b.close()
    for ws in observers:
        got = await recv(ws)
        assert (got["event"], json.loads(got["data"])) == (
            "pusher_internal:member_removed",
            {"user_id": "u1"},
        )
    for ws in observers:
        await nothing_more(ws, 0.3)
    for node in (cluster.a, cluster.b):
        last = presence_transitions(node, channel)[-1]
        assert (last["event"], last["user_id"], last["cause"]) == (
            "member_removed",
            "u1",
            "disconnect",
        )


# --- heartbeats, the cleaner and self-fencing (checks 43, 44) ----------------------------------

FAST = {"CLUSTER_HEARTBEAT_INTERVAL_MS": "200", "CLUSTER_NODE_TIMEOUT_MS": "1500"}


def presence_transitions(node: NodeProcess, channel: str) -> list[dict[str, Any]]:
    """The node's presence-history rows of ``channel`` (its projection opened read-only)."""
    store = ProjectionStore(node.data_dir / "projection", read_only=True)
    try:
        ck = keys.channel_prefix(APP_ID, channel)
        rows = []
        for _key, raw in store.scan(keys.PRESENCE_HIST, ck, keys.prefix_end(ck)):
            rows.append(HistoryRow.decode(raw).message)
        return rows
    finally:
        store.close()


async def append_join(bootstrap: str, prefix: str, channel: str, incarnation: str) -> None:
    """A ``presence.join`` carrying ``incarnation``, appended straight to the log."""
    from sockudo.log.kafka import KafkaLog

    event = PresenceMemberJoined(
        event_id=str(uuid.uuid4()),
        app_id=APP_ID,
        channel=channel,
        origin=Origin(node=incarnation, socket_id="1.1", user_id="u-late", request_id="r"),
        user_id="u-late",
        socket_id="1.1",
        incarnation=incarnation,
    )
    encoded = codec.encode(event)
    key = channel_key(APP_ID, channel)
    log = KafkaLog(bootstrap)
    await log.start()
    try:
        await log.append(
            f"{prefix}.channel-events",
            partition_for(key, PARTITIONS),
            key,
            encoded.value,
            encoded.headers,
            timeout_ms=5000,
        )
    finally:
        await log.close()


async def test_a_stopped_node_is_declared_dead_and_fences_itself(
    kafka_bootstrap: str, tmp_path: Path, stack: AsyncExitStack
) -> None:
    """Checks 43 and 44 with a 200 ms heartbeat and a 1.5 s node timeout."""
    channel = "presence-lobby-43"
    with running_pair(tmp_path, kafka_bootstrap, FAST) as pair:
        dead = incarnation_of(pair.a)
        observer, observer_id = await v1(stack, pair.b)
        presence_of(await subscribe_presence(observer, observer_id, channel, "watcher"))
        u1, u1_id = await v1(stack, pair.a)
        presence_of(await subscribe_presence(u1, u1_id, channel, "u1"))
        added = await recv(observer)
        assert (added["event"], json.loads(added["data"])["user_id"]) == (
            "pusher_internal:member_added",
            "u1",
        )
        await asyncio.sleep(0.5)  # both nodes have seen each other's heartbeats

        assert pair.a.proc is not None
        os.kill(pair.a.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            removed = await recv_until(
                observer, lambda f: f["event"] != "pusher:ping", wait=1.5 + 5
            )
            assert (removed["event"], json.loads(removed["data"])) == (
                "pusher_internal:member_removed",
                {"user_id": "u1"},
            )
            assert time.monotonic() - stopped < 1.5 + 5
            # V1 frames carry only the user id; the cause and the dead incarnation are in the
            # presence history B folded.
            rows = presence_transitions(pair.b, channel)
            assert (rows[-1]["event"], rows[-1]["cause"], rows[-1]["dead_node_id"]) == (
                "member_removed",
                "orphan_cleanup",
                dead,
            )

            # Check 44: a join from the dead incarnation, appended after its node.dead.
            await append_join(kafka_bootstrap, pair.a.topic_prefix, channel, dead)
            await nothing_more(observer, 1.0)
            assert presence_transitions(pair.b, channel) == rows  # no P serial either
            users = pair.api_b.request("GET", f"/apps/{APP_ID}/channels/{channel}/users")
            assert users.json() == {"users": [{"id": "watcher"}]}
        finally:
            os.kill(pair.a.proc.pid, signal.SIGCONT)

        # A wakes up, learns it was declared dead, and closes its sockets with 4200.
        assert await closed_with(u1, 10) == 4200
        # It keeps serving under a new incarnation: u1 reconnects and is a member again.
        back, back_id = await v1(stack, pair.a)
        presence_of(await subscribe_presence(back, back_id, channel, "u1"))
        again = await recv(observer)
        assert (again["event"], json.loads(again["data"])["user_id"]) == (
            "pusher_internal:member_added",
            "u1",
        )
        await asyncio.sleep(1.0)  # past the node timeout: the new incarnation stays alive
        await nothing_more(observer, 0.5)
        await nothing_more(back, 0.1)


async def test_graceful_stop_is_announced_and_the_cleaner_declares_it(
    kafka_bootstrap: str, tmp_path: Path, stack: AsyncExitStack
) -> None:
    """SIGTERM: leaves (cause disconnect), then ``node.stopping``; B declares A dead at once."""
    channel = "presence-stopping"
    slow = {"CLUSTER_HEARTBEAT_INTERVAL_MS": "500", "CLUSTER_NODE_TIMEOUT_MS": "60000"}
    with running_pair(tmp_path, kafka_bootstrap, slow) as pair:
        gone = incarnation_of(pair.a)
        observer, observer_id = await v1(stack, pair.b)
        presence_of(await subscribe_presence(observer, observer_id, channel, "watcher"))
        u1, u1_id = await v1(stack, pair.a)
        presence_of(await subscribe_presence(u1, u1_id, channel, "u1"))
        assert (await recv(observer))["event"] == "pusher_internal:member_added"

        assert await asyncio.to_thread(pair.a.stop) == 0
        removed = await recv(observer)
        assert removed["event"] == "pusher_internal:member_removed"
        rows = presence_transitions(pair.b, channel)
        assert (rows[-1]["cause"], rows[-1]["dead_node_id"]) == ("disconnect", None)

        # Well inside the 60 s timeout, B fences the stopped incarnation's later joins.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            store = ProjectionStore(pair.b.data_dir / "projection", read_only=True)
            try:
                fenced = [
                    store.get(keys.DEAD_NODES, keys.dead_node_key(p, gone)) is not None
                    for p in range(PARTITIONS)
                ]
            finally:
                store.close()
            if all(fenced):
                break
            await asyncio.sleep(0.1)
        assert all(fenced)
