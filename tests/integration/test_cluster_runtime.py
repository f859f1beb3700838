"""The cluster service in process: nodes sharing one in-memory log (spec 05 §9.3).

Each node is a real :class:`Runtime` (RocksDB projection, fold loop) with its own
:class:`ClusterService`; they share one memory log, as nodes share a Kafka cluster. Intervals
are tens of milliseconds, so deaths, declarations and fences happen within a second.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from projections.reads import presence as presence_reads
from projections.store import keys
from sockudo.config import AppConfig, load_settings
from sockudo.errors import AppendOutcomeUnknown, LogUnavailable
from sockudo.events.channel import Origin
from sockudo.events.presence import NodeDeclaredDead, PresenceMemberJoined
from sockudo.log.base import AppendResult
from sockudo.log.memory import MemoryLog
from sockudo.node.cluster import FENCE_CLOSE_CODE, ClusterService
from sockudo.node.connections import ConnectionService
from sockudo.node.hub import Hub
from sockudo.node.runtime import Runtime
from sockudo.node.services import ChannelService

HEARTBEAT_MS = 50
TIMEOUT_MS = 400
CHANNEL = "presence-room"


class SharedLog(MemoryLog):
    """One log for several in-process nodes; ``nodes_down`` makes ``nodes`` appends fail."""

    nodes_down = False
    channels_down = False
    acks_lost = False
    shared_with_others = True

    @property
    def shared(self) -> bool:
        return self.shared_with_others

    async def close(self) -> None:
        """Shared: a stopping node does not close it for the others."""

    async def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        *,
        timeout_ms: int,
    ) -> AppendResult:
        if self.nodes_down and topic.endswith(".nodes"):
            raise LogUnavailable("nodes topic unreachable (test)")
        if self.channels_down and topic.endswith(".channel-events"):
            raise LogUnavailable("channel events unreachable (test)")
        result = await super().append(topic, partition, key, value, headers, timeout_ms=timeout_ms)
        if self.acks_lost and topic.endswith(".channel-events"):
            raise AppendOutcomeUnknown("stored, but the acknowledgement was lost (test)")
        return result


class RecordingHub(Hub):
    def __init__(self) -> None:
        super().__init__()
        self.closes: list[int] = []

    def close_all(self, code: int, reason: str) -> int:
        self.closes.append(code)
        return super().close_all(code, reason)


@dataclass
class Node:
    runtime: Runtime
    connections: ConnectionService
    hub: RecordingHub
    cluster: ClusterService

    @property
    def app(self) -> AppConfig:
        app = self.runtime.settings.app_by_id("app-id")
        assert app is not None
        return app

    def member(self, user_id: str) -> bool:
        store = self.runtime.store
        assert store is not None
        return presence_reads.member(store, "app-id", CHANNEL, user_id) is not None

    def folded_dead(self, incarnation: str) -> bool:
        store = self.runtime.store
        assert store is not None
        return all(
            store.get(keys.DEAD_NODES, keys.dead_node_key(p, incarnation)) is not None
            for p in range(self.runtime.partitions)
        )


class Cluster:
    def __init__(self, tmp_path: Path, stack: AsyncExitStack) -> None:
        self.log = SharedLog()
        self.tmp_path = tmp_path
        self.stack = stack

    async def node(self, node_id: str) -> Node:
        settings = load_settings(
            None,
            overrides={
                "data_dir": str(self.tmp_path / node_id),
                "node_id": node_id,
                "channel_partitions": 2,
                "heartbeat_interval_ms": HEARTBEAT_MS,
                "node_timeout_ms": TIMEOUT_MS,
            },
            environ={},
        )
        runtime = Runtime(settings, event_log=self.log)
        await runtime.start()
        self.stack.push_async_callback(runtime.stop)
        connections = ConnectionService(ChannelService(runtime))
        hub = RecordingHub()
        cluster = ClusterService(runtime, connections, hub)
        await cluster.start()
        self.stack.push_async_callback(cluster.stop, announce=False)
        return Node(runtime, connections, hub, cluster)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        yield Cluster(tmp_path, stack)


async def eventually(check: Callable[[], bool], within: float = 3.0) -> float:
    """Seconds until ``check()`` held; fails after ``within``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def node_dead_records(node: Node) -> list[NodeDeclaredDead]:
    from sockudo.events import codec

    found = []
    runtime = node.runtime
    for p in range(runtime.partitions):
        _start, end = await runtime.log.bounds(runtime.topic, p)
        reader = runtime.log.reader(runtime.topic, {p: 0})
        seen = 0
        while seen < end:
            records = await reader.poll(500, 10)
            seen += len(records)
            for r in records:
                assert r.value is not None
                event = codec.decode(r.headers, r.value)
                if isinstance(event, NodeDeclaredDead):
                    found.append(event)
        await reader.close()
    return found


async def test_a_lone_node_never_declares_itself(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    first = a.runtime.incarnation
    await a.connections.join(a.app, CHANNEL, "1.1", "u1", None)
    await asyncio.sleep(3 * TIMEOUT_MS / 1000)
    assert (a.runtime.incarnation, a.cluster.fences, a.hub.closes) == (first, 0, [])
    assert a.member("u1")
    assert await node_dead_records(a) == []
    assert a.cluster.membership.live(time.monotonic()) == [first]


async def test_a_silent_node_is_declared_dead_and_fences_when_it_wakes(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    old = a.runtime.incarnation
    await a.connections.join(a.app, CHANNEL, "1.1", "u1", None)
    await eventually(lambda: b.member("u1"))
    await eventually(
        lambda: b.cluster.membership.live(time.monotonic()) == sorted([old, b.runtime.incarnation])
    )

    # A stops heartbeating (a pause): B, now the live node with the smallest id, declares it.
    await a.cluster.stop(announce=False)
    took = await eventually(lambda: not b.member("u1"), within=TIMEOUT_MS / 1000 + 2)
    assert took >= TIMEOUT_MS / 1000 * 0.9
    [declared, *_] = [d for d in await node_dead_records(b) if d.incarnation == old]
    assert declared.declared_by == b.runtime.incarnation
    assert declared.last_seen_ms > 0

    # A's own fold saw it too: it fences, closing its sockets with 4200, under a new id.
    await eventually(lambda: a.folded_dead(old))
    await a.cluster.check_fenced()
    assert a.runtime.incarnation != old
    assert a.runtime.incarnation.startswith("node-a/")
    assert (a.cluster.fences, a.hub.closes) == (1, [FENCE_CLOSE_CODE])
    # Joins of the new incarnation count again; B never fenced.
    await a.connections.join(a.app, CHANNEL, "1.2", "u1", None)
    await eventually(lambda: b.member("u1"))
    assert b.cluster.fences == 0


async def test_failed_heartbeats_fence_and_the_old_incarnation_is_cleaned(
    cluster: Cluster,
) -> None:
    a = await cluster.node("node-a")
    old = a.runtime.incarnation
    await a.connections.join(a.app, CHANNEL, "1.1", "u1", None)
    cluster.log.nodes_down = True
    await eventually(lambda: a.cluster.fences == 1, within=2.0)
    assert a.hub.closes == [FENCE_CLOSE_CODE]
    assert a.member("u1")  # nothing could be announced yet
    cluster.log.nodes_down = False
    # The node cleans its own earlier incarnation once its view is fresh again.
    await eventually(lambda: not a.member("u1"), within=2.0)
    assert a.folded_dead(old)
    assert a.cluster.fences == 1


async def test_a_lone_node_whose_heartbeats_fail_does_not_fence(cluster: Cluster) -> None:
    # The embedded log has one writer: nobody can have declared the node dead meanwhile, so a
    # stall past the fence time (a GC or VM pause) must not close every socket.
    cluster.log.shared_with_others = False
    a = await cluster.node("node-a")
    await a.connections.join(a.app, CHANNEL, "1.1", "u1", None)
    cluster.log.nodes_down = True
    await asyncio.sleep(a.cluster.fence_after_s * 3)
    await a.cluster.check_fenced()
    assert (a.cluster.fences, a.hub.closes) == (0, [])
    cluster.log.nodes_down = False
    assert a.member("u1")


async def test_presence_leaves_the_log_missed_are_appended_once_it_answers(
    cluster: Cluster,
) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    await a.connections.join(a.app, CHANNEL, "1.1", "u1", None)
    await eventually(lambda: b.member("u1"))
    # The socket leaves while the log is away: the leave fails, and is owed.
    cluster.log.channels_down = True
    with pytest.raises(LogUnavailable):
        await a.connections.leave(a.app, CHANNEL, "1.1", "u1", "disconnect")
    await asyncio.sleep(HEARTBEAT_MS * 3 / 1000)
    assert b.member("u1")
    cluster.log.channels_down = False
    # A join the client was told failed (the acknowledgement was lost) may be in the log: the
    # socket's leave is owed at once (the WebSocket effect does this on such a failure).
    cluster.log.acks_lost = True
    with pytest.raises(AppendOutcomeUnknown):
        await a.connections.join(a.app, CHANNEL, "1.2", "u2", None)
    cluster.log.acks_lost = False
    a.connections.owe_leave(a.app, CHANNEL, "1.2", "u2", "unsubscribe")
    # Both go with the next heartbeat: no member outlives its socket (before: u1 for good).
    await eventually(lambda: not b.member("u1") and not b.member("u2"), within=2.0)
    assert await a.connections.pay_owed_leaves() == 0


async def test_a_graceful_stop_is_declared_without_waiting_for_the_timeout(
    cluster: Cluster,
) -> None:
    a = await cluster.node("node-a")
    b = await cluster.node("node-b")
    await eventually(lambda: len(b.cluster.membership.live(time.monotonic())) == 2)
    gone = a.runtime.incarnation
    await a.cluster.stop(announce=True)
    took = await eventually(lambda: b.folded_dead(gone))
    assert took < TIMEOUT_MS / 1000


async def test_connections_of_an_incarnation_never_heard_of_are_swept(cluster: Cluster) -> None:
    a = await cluster.node("node-a")
    ghost = "node-z/1-0000"
    event = PresenceMemberJoined(
        event_id=str(uuid.uuid4()),
        app_id="app-id",
        channel=CHANNEL,
        origin=Origin(node=ghost),
        user_id="u-ghost",
        socket_id="9.9",
        incarnation=ghost,
    )
    await a.connections.channels.append_and_wait(event)
    assert a.member("u-ghost")
    # One timeout of start-up grace, then one more of silence.
    took = await eventually(lambda: not a.member("u-ghost"), within=4 * TIMEOUT_MS / 1000)
    assert took >= TIMEOUT_MS / 1000
    assert a.folded_dead(ghost)
