"""The presence fold as a pure function over an in-memory store (spec 01 §3.8, 03 §5.1, 05 §9.3).

Also the channel fold's cache-channel entry (spec 01 §3.9), read through ``projections.reads``.
Records are folded the way the projector folds them: an :class:`Overlay` per batch over the
store, ``ChannelState.flush`` and then the batch's changes committed into a :class:`MemoryKV`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from projections.folds.channel import (
    CHANNEL_EVENT_TYPES,
    ChannelState,
    FoldResult,
    RecordContext,
    decode_offset_outcome,
    fold,
)
from projections.folds.presence import PRESENCE_EVENT_TYPES, fold_presence
from projections.folds.state import (
    CACHE_TTL_MS,
    CLOSE_USER,
    DUPLICATE,
    IGNORED,
    JOINED,
    LEFT,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    MEMBER_UPDATED,
    NODE_DEAD,
    PRESENCE_RESET,
    REBASED,
    TERMINATED,
    UPDATED,
    HistoryRow,
    StreamHead,
    presence_stream_id,
)
from projections.reads.cache import CachedFrame, cached
from projections.reads.presence import Member, member, members, occupied_channels, user_count
from projections.store import keys
from projections.store.kv import KV, MemoryKV, Overlay
from sockudo.events.channel import (
    Flags,
    MessagePublished,
    Origin,
    PartitionRebased,
    Retention,
)
from sockudo.events.presence import (
    NodeDeclaredDead,
    PresenceEvent,
    PresenceHistoryReset,
    PresenceMemberJoined,
    PresenceMemberLeft,
    PresenceMemberUpdated,
)
from sockudo.events.users import UserConnectionsTerminated
from sockudo.log.partitioning import channel_key, partition_for

APP = "app"
ROOM = "presence-room"
A = "node-a/1700000000000-0a0a"
B = "node-b/1700000000001-0b0b"
T0 = 1_700_000_000_000

Event = PresenceEvent | UserConnectionsTerminated | MessagePublished | PartitionRebased


# --- event builders ------------------------------------------------------------------------


def _id() -> str:
    return str(uuid.uuid4())


def join(
    user: str,
    socket: str,
    inc: str = A,
    *,
    info: Any = None,
    channel: str = ROOM,
    history: bool = True,
    retention: Retention | None = None,
    event_id: str | None = None,
) -> PresenceMemberJoined:
    return PresenceMemberJoined(
        event_id=event_id or _id(),
        app_id=APP,
        channel=channel,
        origin=Origin(node=inc, socket_id=socket),
        user_id=user,
        socket_id=socket,
        incarnation=inc,
        user_info_json=None if info is None else json.dumps(info, separators=(",", ":")),
        flags=Flags(presence_history=history),
        retention=retention or Retention(),
    )


def leave(
    user: str,
    socket: str,
    inc: str = A,
    *,
    cause: str = "disconnect",
    channel: str = ROOM,
    history: bool = True,
    retention: Retention | None = None,
    event_id: str | None = None,
) -> PresenceMemberLeft:
    return PresenceMemberLeft(
        event_id=event_id or _id(),
        app_id=APP,
        channel=channel,
        origin=Origin(node=inc, socket_id=socket),
        user_id=user,
        socket_id=socket,
        incarnation=inc,
        cause=cause,
        flags=Flags(presence_history=history),
        retention=retention or Retention(),
    )


def update(
    user: str, socket: str, inc: str = A, *, info: Any, channel: str = ROOM, history: bool = True
) -> PresenceMemberUpdated:
    return PresenceMemberUpdated(
        event_id=_id(),
        app_id=APP,
        channel=channel,
        origin=Origin(node=inc, socket_id=socket),
        user_id=user,
        socket_id=socket,
        incarnation=inc,
        user_info_json=json.dumps(info, separators=(",", ":")),
        flags=Flags(presence_history=history),
    )


def dead(inc: str, *, event_id: str | None = None) -> NodeDeclaredDead:
    return NodeDeclaredDead(
        event_id=event_id or _id(),
        origin=Origin(node=B),
        incarnation=inc,
        declared_by=B,
        last_seen_ms=T0,
    )


def reset(channel: str = ROOM, new_stream_id: str | None = None) -> PresenceHistoryReset:
    return PresenceHistoryReset(
        event_id=_id(),
        app_id=APP,
        channel=channel,
        origin=Origin(node=A),
        new_stream_id=new_stream_id or _id(),
        reason="ops",
    )


def terminate(user: str, *, reconnect: bool = False) -> UserConnectionsTerminated:
    return UserConnectionsTerminated(
        event_id=_id(), app_id=APP, user_id=user, origin=Origin(node=A), reconnect=reconnect
    )


def publish(channel: str, n: int = 0, **kw: Any) -> MessagePublished:
    base: dict[str, Any] = {
        "event_id": _id(),
        "app_id": APP,
        "channel": channel,
        "origin": Origin(node=A),
        "message_id": f"m{n}",
        "name": f"ev{n}",
        "data": f"payload-{n}",
    }
    base.update(kw)
    return MessagePublished(**base)


# --- a log and a projector in miniature ------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    timestamp_ms: int
    previous_timestamp_ms: int | None
    event: Event


class Log:
    """Assigns records to partitions (as the appender would), offsets and log-append times."""

    def __init__(self, partitions: int = 1, *, start_ts: int = T0, step_ms: int = 10) -> None:
        self.partitions = partitions
        self.step_ms = step_ms
        self._next_ts = start_ts
        self._next_offset: dict[int, int] = {}
        self._last_ts: dict[int, int] = {}

    def partition_of(self, event: Event) -> int:
        assert not isinstance(event, (NodeDeclaredDead, PartitionRebased)), (
            "partition markers need an explicit partition"
        )
        return partition_for(channel_key(event.app_id, event.channel), self.partitions)

    def append(self, event: Event, partition: int | None = None) -> Rec:
        p = self.partition_of(event) if partition is None else partition
        ts = self._next_ts
        self._next_ts += self.step_ms
        offset = self._next_offset.get(p, 0)
        self._next_offset[p] = offset + 1
        rec = Rec(p, offset, ts, self._last_ts.get(p), event)
        self._last_ts[p] = ts
        return rec

    def advance(self, ms: int) -> None:
        self._next_ts += ms


def fold_records(
    kv: MemoryKV,
    recs: Sequence[Rec],
    *,
    partitions: int,
    batch: int | None = None,
    deliver: bool = True,
    overlay: bool = True,
) -> list[FoldResult]:
    """Fold ``recs`` in batches of ``batch`` (all at once when ``None``) and commit into ``kv``.

    ``overlay=False`` folds straight into ``kv`` with one ``ChannelState`` per record.
    """
    size = batch or max(len(recs), 1)
    results: list[FoldResult] = []
    for i in range(0, len(recs), size):
        chunk = recs[i : i + size]
        if not overlay:
            for rec in chunk:
                state = ChannelState(kv)
                results.append(_fold_one(state, rec, partitions, deliver))
                state.flush()
            continue
        ov = Overlay(kv)
        state = ChannelState(ov)
        for rec in chunk:
            results.append(_fold_one(state, rec, partitions, deliver))
        state.flush()
        for cf, pairs in ov.changes().items():
            for k, v in pairs.items():
                if v is None:
                    kv.delete(cf, k)
                else:
                    kv.put(cf, k, v)
    return results


def _fold_one(state: ChannelState, rec: Rec, partitions: int, deliver: bool) -> FoldResult:
    ctx = RecordContext(
        topic="sockudo.channel-events",
        partition=rec.partition,
        offset=rec.offset,
        timestamp_ms=rec.timestamp_ms,
        previous_timestamp_ms=rec.previous_timestamp_ms,
        partitions=partitions,
        partitioner=partition_for,
        deliver=deliver,
    )
    ev = rec.event
    if isinstance(ev, PRESENCE_EVENT_TYPES):
        return fold_presence(state, ctx, ev)
    assert isinstance(ev, CHANNEL_EVENT_TYPES)
    return fold(state, ctx, ev)


class Projection:
    """One store fed record by record; remembers where each record landed."""

    def __init__(self, partitions: int = 1, *, deliver: bool = True, step_ms: int = 10) -> None:
        self.kv = MemoryKV()
        self.log = Log(partitions, step_ms=step_ms)
        self.deliver = deliver
        self.recs: list[Rec] = []

    def fold(self, event: Event, partition: int | None = None) -> FoldResult:
        rec = self.log.append(event, partition)
        self.recs.append(rec)
        return fold_records(self.kv, [rec], partitions=self.log.partitions, deliver=self.deliver)[0]

    @property
    def last(self) -> Rec:
        return self.recs[-1]


# --- reading the store -----------------------------------------------------------------------


def snapshot(kv: MemoryKV) -> dict[str, list[tuple[bytes, bytes]]]:
    return {cf: list(kv.items(cf)) for cf in keys.COLUMN_FAMILIES}


def presence_head(kv: KV, channel: str = ROOM) -> StreamHead | None:
    raw = kv.get(keys.PSTREAMS, keys.channel_prefix(APP, channel))
    return None if raw is None else StreamHead.decode(raw)


def history(kv: MemoryKV, channel: str = ROOM) -> list[tuple[int, int, HistoryRow]]:
    """``(generation, serial, row)`` of every retained presence transition, in key order."""
    ck = keys.channel_prefix(APP, channel)
    out = []
    for key, raw in kv.scan(keys.PRESENCE_HIST, ck, keys.prefix_end(ck)):
        gen = int.from_bytes(key[len(ck) : len(ck) + 4], "big")
        serial = keys.read_u64(key, len(ck) + 4)
        out.append((gen, serial, HistoryRow.decode(raw)))
    return out


def transitions(kv: MemoryKV, channel: str = ROOM) -> list[dict[str, Any]]:
    return [row.message for _g, _s, row in history(kv, channel)]


def by_node_keys(kv: MemoryKV, partition: int, inc: str) -> list[bytes]:
    prefix = keys.by_node_prefix(partition, inc)
    return [k for k, _ in kv.scan(keys.BY_NODE, prefix, keys.prefix_end(prefix))]


def channel_in_partition(partition: int, partitions: int, prefix: str = "presence-r") -> str:
    for i in range(10_000):
        channel = f"{prefix}{i}"
        if partition_for(channel_key(APP, channel), partitions) == partition:
            return channel
    raise AssertionError("no channel found")  # pragma: no cover


def data_of(result: FoldResult) -> Any:
    (delivery,) = result.deliveries
    return json.loads(delivery.data)


# --- joins -----------------------------------------------------------------------------------


def test_first_connection_adds_the_member_with_one_member_added_delivery() -> None:
    proj = Projection()
    ev = join("u1", "1.1", info={"name": "Ann"}, history=False)
    result = proj.fold(ev)

    assert result.outcome.kind == JOINED
    assert (result.outcome.app_id, result.outcome.channel) == (APP, ROOM)
    assert result.outcome.details == {"edge": MEMBER_ADDED}
    (d,) = result.deliveries
    assert d.kind == MEMBER_ADDED
    assert d.event == "pusher_internal:member_added"
    assert (d.app_id, d.channel, d.user_id) == (APP, ROOM, "u1")
    assert d.message_id == ev.event_id
    assert d.published_at_ms == proj.last.timestamp_ms
    assert not d.client_event
    assert json.loads(d.data) == {"user_id": "u1", "user_info": {"name": "Ann"}}
    assert members(proj.kv, APP, ROOM) == [Member("u1", {"name": "Ann"}, 1)]
    assert user_count(proj.kv, APP, ROOM) == 1
    # The outcome is kept under the record's offset for waiters.
    raw = proj.kv.get(keys.OFFSETS, keys.offset_key(0, proj.last.offset))
    assert raw is not None
    assert decode_offset_outcome(raw) == result.outcome


def test_join_without_user_info_reports_an_empty_object() -> None:
    proj = Projection()
    result = proj.fold(join("u1", "1.1"))
    assert data_of(result) == {"user_id": "u1", "user_info": {}}
    assert list(json.loads(result.deliveries[0].data)) == ["user_id", "user_info"]
    assert member(proj.kv, APP, ROOM, "u1") == Member("u1", {}, 1)


@pytest.mark.parametrize(
    ("socket", "inc"),
    [("1.2", A), ("1.1", B)],
    ids=["other-socket-same-incarnation", "same-socket-other-incarnation"],
)
def test_second_connection_of_a_user_is_no_edge_and_keeps_the_first_info(
    socket: str, inc: str
) -> None:
    proj = Projection()
    first = proj.fold(join("u1", "1.1", A, info={"tab": 1}))
    second = proj.fold(join("u1", socket, inc, info={"tab": 2}))

    assert first.outcome.details["presence_serial"] == 1
    assert second.outcome.kind == JOINED
    assert second.outcome.details == {"edge": None}  # no edge, no presence serial
    assert second.deliveries == ()
    assert members(proj.kv, APP, ROOM) == [Member("u1", {"tab": 1}, 2)]
    assert [t["serial"] for t in transitions(proj.kv)] == [1]


def test_members_of_several_users_and_channels_are_kept_apart() -> None:
    proj = Projection()
    proj.fold(join("u2", "1.2", info={"n": 2}))
    proj.fold(join("u1", "1.1", info={"n": 1}))
    proj.fold(join("u1", "1.3", channel="presence-other"))
    assert members(proj.kv, APP, ROOM) == [
        Member("u1", {"n": 1}, 1),
        Member("u2", {"n": 2}, 1),
    ]
    assert members(proj.kv, APP, "presence-other") == [Member("u1", {}, 1)]


def test_occupied_presence_channels_by_prefix() -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1", channel="presence-a"))
    proj.fold(join("u2", "1.2", channel="presence-a"))
    proj.fold(join("u1", "1.3", channel="presence-b"))
    proj.fold(join("u3", "1.4", channel="presence-b"))
    proj.fold(leave("u3", "1.4", channel="presence-b"))
    assert occupied_channels(proj.kv, APP) == {"presence-a": 2, "presence-b": 1}
    assert occupied_channels(proj.kv, APP, "presence-b") == {"presence-b": 1}
    assert occupied_channels(proj.kv, APP, "presence-z") == {}
    assert occupied_channels(proj.kv, "other-app") == {}


# --- leaves ----------------------------------------------------------------------------------


def test_leave_of_a_non_last_connection_is_no_edge_and_of_the_last_removes_the_member() -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1", A, info={"a": 1}))
    proj.fold(join("u1", "2.1", B))
    proj.fold(join("u2", "1.2", A))

    first = proj.fold(leave("u1", "1.1", A))
    assert first.outcome.kind == LEFT
    assert first.outcome.details == {"edge": None}
    assert first.deliveries == ()
    assert member(proj.kv, APP, ROOM, "u1") == Member("u1", {"a": 1}, 1)

    last = proj.fold(leave("u1", "2.1", B))
    assert last.outcome.kind == LEFT
    assert last.outcome.details["edge"] == MEMBER_REMOVED
    (d,) = last.deliveries
    assert d.kind == MEMBER_REMOVED
    assert d.event == "pusher_internal:member_removed"
    assert (d.app_id, d.channel, d.user_id) == (APP, ROOM, "u1")
    assert d.published_at_ms == proj.last.timestamp_ms
    assert json.loads(d.data) == {"user_id": "u1"}
    assert member(proj.kv, APP, ROOM, "u1") is None
    assert members(proj.kv, APP, ROOM) == [Member("u2", {}, 1)]
    # Connection rows and the by-node index are gone with the connections.
    ck = keys.channel_prefix(APP, ROOM)
    assert [k for k, _ in proj.kv.scan(keys.PRESENCE, ck, keys.prefix_end(ck))] == [
        keys.connection_key(ck, "u2", A, "1.2")
    ]
    assert by_node_keys(proj.kv, 0, B) == []
    assert by_node_keys(proj.kv, 0, A) == [keys.by_node_key(0, A, ck, "u2", "1.2")]


def test_member_removed_delivery_carries_the_leave_event_id() -> None:
    """Like member_added / member_updated (and node.dead removals), keyed by its record."""
    proj = Projection()
    proj.fold(join("u1", "1.1"))
    ev = leave("u1", "1.1")
    (d,) = proj.fold(ev).deliveries
    assert d.message_id == ev.event_id


@pytest.mark.parametrize("opener", ["join", "leave"])
def test_first_presence_stream_id_derives_from_the_opening_records_event_id(opener: str) -> None:
    """Spec 05 §6.3: a generation opened without a minted id is UUIDv5 of its opening event."""
    proj = Projection()
    ev: Event
    if opener == "join":
        ev = join("u1", "1.1", history=True)
    else:
        proj.fold(join("u1", "1.1", history=False))
        ev = leave("u1", "1.1", history=True)
    proj.fold(ev)
    expected = str(uuid.uuid5(uuid.UUID(ev.event_id), f"presence\x00{APP}\x00{ROOM}"))
    head = presence_head(proj.kv)
    assert head is not None
    assert head.stream_id == expected
    assert transitions(proj.kv)[0]["stream_id"] == expected


def test_two_nodes_one_user_gives_one_added_and_one_removed() -> None:
    """Spec 05 check 42, at the fold: edges only for the first and the last connection."""
    proj = Projection()
    results = [
        proj.fold(join("u1", "1.1", A)),
        proj.fold(join("u1", "2.1", B)),
        proj.fold(leave("u1", "1.1", A, cause="disconnect")),
        proj.fold(leave("u1", "2.1", B, cause="disconnect")),
    ]
    assert [[d.kind for d in r.deliveries] for r in results] == [
        [MEMBER_ADDED],
        [],
        [],
        [MEMBER_REMOVED],
    ]
    assert [(t["event"], t["cause"]) for t in transitions(proj.kv)] == [
        (MEMBER_ADDED, "join"),
        (MEMBER_REMOVED, "disconnect"),
    ]


@pytest.mark.parametrize(
    ("user", "socket", "inc"),
    [("u9", "9.9", A), ("u1", "1.9", A), ("u1", "1.1", B)],
    ids=["unknown-user", "unknown-socket", "other-incarnation"],
)
def test_leave_of_an_unknown_connection_is_ignored(user: str, socket: str, inc: str) -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1", A))
    before = {cf: list(proj.kv.items(cf)) for cf in (keys.PRESENCE, keys.PRESENCE_USERS)}

    result = proj.fold(leave(user, socket, inc))

    assert result.outcome.kind == IGNORED
    assert result.outcome.details == {"reason": "not_joined"}
    assert result.deliveries == ()
    assert {cf: list(proj.kv.items(cf)) for cf in before} == before
    assert [t["event"] for t in transitions(proj.kv)] == [MEMBER_ADDED]


def test_duplicate_join_of_the_same_connection_is_ignored_and_not_counted() -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1", info={"v": 1}))
    again = proj.fold(join("u1", "1.1", info={"v": 2}))  # new event id, same connection

    assert again.outcome.kind == IGNORED
    assert again.outcome.details == {"reason": "already_joined"}
    assert again.deliveries == ()
    assert members(proj.kv, APP, ROOM) == [Member("u1", {"v": 1}, 1)]
    # One leave is enough to remove the member: the duplicate did not add a connection.
    gone = proj.fold(leave("u1", "1.1"))
    assert [d.kind for d in gone.deliveries] == [MEMBER_REMOVED]
    assert members(proj.kv, APP, ROOM) == []


def test_member_updated_replaces_the_info_and_is_recorded() -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1", info={"v": 1}))
    proj.fold(join("u1", "1.2", info={"v": 1}))
    result = proj.fold(update("u1", "1.2", info={"v": 2}))

    assert result.outcome.kind == UPDATED
    assert result.outcome.details == {"edge": MEMBER_UPDATED, "presence_serial": 2}
    (d,) = result.deliveries
    assert d.kind == MEMBER_UPDATED
    assert json.loads(d.data) == {"user_id": "u1", "user_info": {"v": 2}}
    assert members(proj.kv, APP, ROOM) == [Member("u1", {"v": 2}, 2)]
    last = transitions(proj.kv)[-1]
    assert (last["event"], last["cause"], last["user_info"]) == (MEMBER_UPDATED, "join", {"v": 2})

    unknown = proj.fold(update("u1", "1.9", info={"v": 3}))
    assert unknown.outcome.kind == IGNORED
    assert unknown.deliveries == ()
    assert members(proj.kv, APP, ROOM) == [Member("u1", {"v": 2}, 2)]


# --- event-level dedupe ----------------------------------------------------------------------


def test_same_event_id_twice_returns_the_original_outcome_without_delivery() -> None:
    proj = Projection()
    ev = join("u1", "1.1", info={"a": 1})
    first = proj.fold(ev)
    first_offset = proj.last.offset
    second = proj.fold(ev)

    assert second.outcome.kind == DUPLICATE
    assert second.outcome.duplicate_of == first_offset
    assert (
        second.outcome.details
        == first.outcome.details
        == {
            "edge": MEMBER_ADDED,
            "presence_serial": 1,
        }
    )
    assert (second.outcome.app_id, second.outcome.channel) == (APP, ROOM)
    assert second.deliveries == ()
    assert members(proj.kv, APP, ROOM) == [Member("u1", {"a": 1}, 1)]
    assert [t["serial"] for t in transitions(proj.kv)] == [1]


def test_replayed_join_after_its_leave_does_not_rejoin() -> None:
    """Only event-id dedupe tells a retried append from a new join of the same connection."""
    proj = Projection()
    ev = join("u1", "1.1")
    proj.fold(ev)
    proj.fold(leave("u1", "1.1"))
    replay = proj.fold(ev)

    assert replay.outcome.kind == DUPLICATE
    assert replay.outcome.duplicate_of == 0
    assert replay.deliveries == ()
    assert members(proj.kv, APP, ROOM) == []
    assert [t["event"] for t in transitions(proj.kv)] == [MEMBER_ADDED, MEMBER_REMOVED]


def test_replayed_leave_is_a_duplicate_of_the_original() -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1"))
    proj.fold(join("u1", "1.2"))
    ev = leave("u1", "1.1")
    proj.fold(ev)
    replay = proj.fold(ev)
    assert replay.outcome.kind == DUPLICATE
    assert replay.outcome.duplicate_of == 2
    assert replay.outcome.details == {"edge": None}
    assert members(proj.kv, APP, ROOM) == [Member("u1", {}, 1)]


# --- presence history ------------------------------------------------------------------------


def test_edges_get_consecutive_presence_serials_and_history_rows() -> None:
    proj = Projection()
    events: list[Event] = [
        join("u1", "1.1", info={"name": "Ann"}),  # P1
        join("u1", "1.2"),  # no edge
        join("u2", "1.3"),  # P2
        leave("u1", "1.1", cause="disconnect"),  # no edge
        leave("u1", "1.2", cause="unsubscribe"),  # P3
        leave("u2", "1.3", cause="terminated"),  # P4
        join("u3", "1.4", info=[1, 2]),  # P5
    ]
    results = [proj.fold(ev) for ev in events]

    assert [r.outcome.details.get("presence_serial") for r in results] == [
        1,
        None,
        2,
        None,
        3,
        4,
        5,
    ]
    rows = history(proj.kv)
    assert [(g, s) for g, s, _ in rows] == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5)]
    edge_recs = [proj.recs[i] for i in (0, 2, 4, 5, 6)]
    assert [row.offset for _, _, row in rows] == [r.offset for r in edge_recs]
    assert [row.published_at_ms for _, _, row in rows] == [r.timestamp_ms for r in edge_recs]

    msgs = [row.message for _, _, row in rows]
    stream_ids = {m["stream_id"] for m in msgs}
    assert len(stream_ids) == 1
    (stream_id,) = stream_ids
    uuid.UUID(stream_id)
    assert msgs[0] == {
        "stream_id": stream_id,
        "serial": 1,
        "published_at_ms": proj.recs[0].timestamp_ms,
        "event": MEMBER_ADDED,
        "cause": "join",
        "user_id": "u1",
        "connection_id": "1.1",
        "user_info": {"name": "Ann"},
        "dead_node_id": None,
    }
    assert [(m["event"], m["cause"], m["user_id"], m["connection_id"]) for m in msgs] == [
        (MEMBER_ADDED, "join", "u1", "1.1"),
        (MEMBER_ADDED, "join", "u2", "1.3"),
        (MEMBER_REMOVED, "disconnect", "u1", "1.2"),
        (MEMBER_REMOVED, "forced_disconnect", "u2", "1.3"),
        (MEMBER_ADDED, "join", "u3", "1.4"),
    ]
    assert msgs[1]["user_info"] == {}
    assert msgs[4]["user_info"] == [1, 2]
    assert all(m["dead_node_id"] is None for m in msgs)

    head = presence_head(proj.kv)
    assert head is not None
    assert head.stream_id == stream_id
    assert (head.generation, head.next_h, head.retained_count) == (1, 6, 5)
    assert head.retained_bytes == sum(row.size for _, _, row in rows)
    assert (head.oldest_serial, head.newest_serial) == (1, 5)
    assert (head.oldest_ts, head.newest_ts) == (
        proj.recs[0].timestamp_ms,
        proj.recs[6].timestamp_ms,
    )
    # The presence stream is not the message stream of the channel.
    assert proj.kv.get(keys.STREAMS, keys.channel_prefix(APP, ROOM)) is None


@pytest.mark.parametrize(
    ("cause", "recorded"),
    [
        ("unsubscribe", "disconnect"),
        ("disconnect", "disconnect"),
        ("terminated", "forced_disconnect"),
        ("timeout", "timeout"),
        ("orphan_cleanup", "orphan_cleanup"),
    ],
)
def test_leave_causes_map_to_history_causes(cause: str, recorded: str) -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1"))
    result = proj.fold(leave("u1", "1.1", cause=cause))
    assert result.outcome.details == {"edge": MEMBER_REMOVED, "presence_serial": 2}
    last = transitions(proj.kv)[-1]
    assert (last["event"], last["cause"]) == (MEMBER_REMOVED, recorded)


def test_presence_history_off_records_nothing_but_still_delivers() -> None:
    proj = Projection()
    results = [
        proj.fold(join("u1", "1.1", history=False)),
        proj.fold(join("u2", "1.2", history=False)),
        proj.fold(leave("u1", "1.1", history=False)),
    ]
    assert [r.outcome.details for r in results] == [
        {"edge": MEMBER_ADDED},
        {"edge": MEMBER_ADDED},
        {"edge": MEMBER_REMOVED},
    ]
    assert [[d.kind for d in r.deliveries] for r in results] == [
        [MEMBER_ADDED],
        [MEMBER_ADDED],
        [MEMBER_REMOVED],
    ]
    assert list(proj.kv.items(keys.PRESENCE_HIST)) == []
    assert list(proj.kv.items(keys.PSTREAMS)) == []


def test_history_switched_on_later_starts_at_serial_one() -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1", history=False))
    result = proj.fold(join("u2", "1.2", history=True))
    assert result.outcome.details["presence_serial"] == 1
    assert [t["user_id"] for t in transitions(proj.kv)] == ["u2"]


def test_count_retention_evicts_the_oldest_transitions() -> None:
    proj = Projection()
    keep2 = Retention(max_count=2)
    for _ in range(2):
        proj.fold(join("u1", "1.1", retention=keep2))
        proj.fold(leave("u1", "1.1", retention=keep2))
    proj.fold(join("u1", "1.1", retention=keep2))

    assert [(g, s) for g, s, _ in history(proj.kv)] == [(1, 4), (1, 5)]
    head = presence_head(proj.kv)
    assert head is not None
    assert (head.next_h, head.retained_count, head.oldest_serial, head.newest_serial) == (
        6,
        2,
        4,
        5,
    )
    assert head.evicted_through_serial == 3
    assert head.evicted_through_time_ms == proj.recs[2].timestamp_ms
    assert head.oldest_ts == proj.recs[3].timestamp_ms
    assert head.retained_bytes == sum(row.size for _, _, row in history(proj.kv))


def test_window_retention_evicts_transitions_older_than_the_window() -> None:
    proj = Projection(step_ms=400)
    window = Retention(window_s=1)
    for user in ("u1", "u2", "u3", "u4"):
        proj.fold(join(user, f"s-{user}", retention=window))
    # Record times 0, 400, 800, 1200 ms: at 1200 the cutoff is 200, so serial 1 is gone.
    assert [s for _, s, _ in history(proj.kv)] == [2, 3, 4]
    head = presence_head(proj.kv)
    assert head is not None
    assert (head.oldest_serial, head.evicted_through_serial) == (2, 1)


def test_history_reset_starts_a_new_generation_and_keeps_live_membership() -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1", info={"a": 1}))
    proj.fold(join("u2", "1.2"))
    proj.fold(join("u2", "1.3"))
    old_stream = transitions(proj.kv)[0]["stream_id"]
    members_before = members(proj.kv, APP, ROOM)

    new_stream = _id()
    result = proj.fold(reset(new_stream_id=new_stream))

    assert result.outcome.kind == PRESENCE_RESET
    assert result.outcome.stream_id == new_stream
    assert result.outcome.details == {"previous_stream_id": old_stream, "purged_events": 2}
    assert result.deliveries == ()
    assert history(proj.kv) == []
    assert members(proj.kv, APP, ROOM) == members_before
    head = presence_head(proj.kv)
    assert head is not None
    assert (head.stream_id, head.generation, head.next_h, head.retained_count) == (
        new_stream,
        2,
        1,
        0,
    )
    assert head.last_transition_at_ms == proj.last.timestamp_ms

    # The next edge is serial 1 of the new generation, under the new stream id.
    removed = proj.fold(leave("u1", "1.1"))
    assert removed.outcome.details["presence_serial"] == 1
    rows = history(proj.kv)
    assert [(g, s) for g, s, _ in rows] == [(2, 1)]
    assert rows[0][2].message["stream_id"] == new_stream
    assert rows[0][2].message["user_info"] == {"a": 1}
    # A surviving connection of a kept member still counts.
    assert proj.fold(leave("u2", "1.2")).deliveries == ()
    assert [d.kind for d in proj.fold(leave("u2", "1.3")).deliveries] == [MEMBER_REMOVED]


def test_partition_rebase_restarts_presence_history_of_that_partition_only() -> None:
    proj = Projection(partitions=2)
    rebased, other = channel_in_partition(0, 2), channel_in_partition(1, 2)
    for channel in (rebased, other):
        proj.fold(join("u1", "1.1", channel=channel, info={"a": 1}))
        proj.fold(join("u2", "1.2", channel=channel))
    members_before = members(proj.kv, APP, rebased)
    other_before = (presence_head(proj.kv, other), history(proj.kv, other))
    old = presence_head(proj.kv, rebased)
    assert old is not None

    rebase = PartitionRebased(event_id=_id(), origin=Origin(node=A))
    result = proj.fold(rebase, partition=0)

    assert result.outcome.kind == REBASED
    assert result.outcome.details["presence_channels"] == 1
    head = presence_head(proj.kv, rebased)
    assert head is not None
    assert head.stream_id == presence_stream_id(rebase.event_id, APP, rebased)
    assert head.stream_id != old.stream_id
    assert (head.generation, head.next_h, head.retained_count) == (old.generation + 1, 1, 0)
    assert head.last_transition_at_ms == proj.last.timestamp_ms
    assert history(proj.kv, rebased) == []
    assert members(proj.kv, APP, rebased) == members_before
    assert (presence_head(proj.kv, other), history(proj.kv, other)) == other_before

    # The next edge is serial 1 of the new generation, under the derived stream id.
    removed = proj.fold(leave("u1", "1.1", channel=rebased))
    assert removed.outcome.details["presence_serial"] == 1
    assert [row["stream_id"] for row in transitions(proj.kv, rebased)] == [head.stream_id]


def test_history_reset_of_a_channel_without_history() -> None:
    proj = Projection()
    new_stream = _id()
    result = proj.fold(reset(new_stream_id=new_stream))
    assert result.outcome.details == {"previous_stream_id": None, "purged_events": 0}
    head = presence_head(proj.kv)
    assert head is not None
    assert (head.stream_id, head.generation, head.next_h) == (new_stream, 1, 1)
    proj.fold(join("u1", "1.1"))
    assert [(m["stream_id"], m["serial"]) for m in transitions(proj.kv)] == [(new_stream, 1)]


# --- node.dead -------------------------------------------------------------------------------


def test_node_dead_removes_the_incarnations_connections_and_fences_its_joins() -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1", A, info={"who": "u1"}))  # only on A
    proj.fold(join("u2", "1.2", A))  # on A and B
    proj.fold(join("u2", "2.2", B))
    proj.fold(join("u3", "2.3", B))  # only on B
    proj.fold(join("u1", "1.4", A, channel="presence-other", history=False))
    ev = dead(A)

    result = proj.fold(ev, partition=0)

    assert result.outcome.kind == NODE_DEAD
    assert result.outcome.details == {"incarnation": A, "connections": 3}
    assert sorted((d.channel, d.kind, d.user_id) for d in result.deliveries) == [
        ("presence-other", MEMBER_REMOVED, "u1"),
        (ROOM, MEMBER_REMOVED, "u1"),
    ]
    assert all(json.loads(d.data) == {"user_id": "u1"} for d in result.deliveries)
    assert all(d.message_id == ev.event_id for d in result.deliveries)
    assert members(proj.kv, APP, ROOM) == [Member("u2", {}, 1), Member("u3", {}, 1)]
    assert members(proj.kv, APP, "presence-other") == []
    assert by_node_keys(proj.kv, 0, A) == []
    assert len(by_node_keys(proj.kv, 0, B)) == 2
    assert proj.kv.get(keys.DEAD_NODES, keys.dead_node_key(0, A)) is not None

    # Orphan cleanup is recorded where the channel has a presence-history stream.
    last = transitions(proj.kv)[-1]
    assert (last["event"], last["cause"], last["user_id"]) == (
        MEMBER_REMOVED,
        "orphan_cleanup",
        "u1",
    )
    assert (last["dead_node_id"], last["connection_id"]) == (A, "1.1")
    assert last["user_info"] == {"who": "u1"}
    assert transitions(proj.kv, "presence-other") == []

    # Spec 05 check 44: a join from the dead incarnation is ignored, no edge and no serial.
    head_before = presence_head(proj.kv)
    late = proj.fold(join("u9", "1.9", A))
    assert late.outcome.kind == IGNORED
    assert late.outcome.details == {"reason": "dead_incarnation"}
    assert late.deliveries == ()
    assert member(proj.kv, APP, ROOM, "u9") is None
    assert presence_head(proj.kv) == head_before
    assert by_node_keys(proj.kv, 0, A) == []
    # ... also for a user still present through another incarnation.
    assert proj.fold(join("u2", "1.5", A)).outcome.kind == IGNORED
    assert member(proj.kv, APP, ROOM, "u2") == Member("u2", {}, 1)
    # A leave from it finds nothing; other incarnations are unaffected.
    assert proj.fold(leave("u2", "1.2", A)).outcome.kind == IGNORED
    assert proj.fold(join("u9", "2.9", B)).outcome.kind == JOINED


def test_orphan_cleanup_records_under_the_policy_its_join_carried() -> None:
    proj = Projection()
    keep_two = Retention(max_count=2)
    for user in ("u1", "u2", "u3"):
        proj.fold(join(user, f"1.{user}", A, retention=keep_two))
    # Three joins under max_count=2: the oldest transition is already gone.
    assert [row["user_id"] for row in transitions(proj.kv)] == ["u2", "u3"]

    proj.fold(dead(A), partition=0)

    # Three cleanup leaves, each applying the joins' retention: the last two remain.
    rows = transitions(proj.kv)
    assert [(row["event"], row["user_id"]) for row in rows] == [
        (MEMBER_REMOVED, "u2"),
        (MEMBER_REMOVED, "u3"),
    ]
    assert all(row["cause"] == "orphan_cleanup" for row in rows)
    head = presence_head(proj.kv)
    assert head is not None
    assert head.retained_count == 2


def test_node_dead_of_a_user_present_elsewhere_is_no_edge() -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1", A))
    proj.fold(join("u1", "1.2", A))
    proj.fold(join("u1", "2.1", B))
    result = proj.fold(dead(A), partition=0)
    assert result.outcome.details["connections"] == 2
    assert result.deliveries == ()
    assert members(proj.kv, APP, ROOM) == [Member("u1", {}, 1)]
    assert [t["event"] for t in transitions(proj.kv)] == [MEMBER_ADDED]


def test_node_dead_only_touches_connections_of_its_partition() -> None:
    proj = Projection(partitions=2)
    ch0 = channel_in_partition(0, 2)
    ch1 = channel_in_partition(1, 2)
    r0 = proj.fold(join("u1", "1.1", A, channel=ch0))
    assert proj.last.partition == 0
    r1 = proj.fold(join("u1", "1.2", A, channel=ch1))
    assert proj.last.partition == 1
    assert [d.kind for d in r0.deliveries + r1.deliveries] == [MEMBER_ADDED, MEMBER_ADDED]
    assert len(by_node_keys(proj.kv, 0, A)) == len(by_node_keys(proj.kv, 1, A)) == 1

    in_p0 = proj.fold(dead(A), partition=0)

    assert in_p0.outcome.details == {"incarnation": A, "connections": 1}
    assert [(d.channel, d.kind) for d in in_p0.deliveries] == [(ch0, MEMBER_REMOVED)]
    assert members(proj.kv, APP, ch0) == []
    assert members(proj.kv, APP, ch1) == [Member("u1", {}, 1)]
    assert by_node_keys(proj.kv, 0, A) == []
    assert len(by_node_keys(proj.kv, 1, A)) == 1
    # The fence is per partition: partition 0 ignores A, partition 1 has not heard yet.
    assert proj.fold(join("u2", "1.3", A, channel=ch0)).outcome.kind == IGNORED
    assert proj.fold(join("u2", "1.4", A, channel=ch1)).outcome.kind == JOINED

    in_p1 = proj.fold(dead(A), partition=1)
    assert in_p1.outcome.details == {"incarnation": A, "connections": 2}
    assert sorted(d.user_id or "" for d in in_p1.deliveries) == ["u1", "u2"]
    assert members(proj.kv, APP, ch1) == []
    assert by_node_keys(proj.kv, 1, A) == []


def test_a_repeated_node_dead_is_harmless() -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1", A))
    proj.fold(join("u2", "2.1", B))
    proj.fold(dead(A), partition=0)
    state = {
        cf: list(proj.kv.items(cf))
        for cf in (keys.PRESENCE, keys.PRESENCE_USERS, keys.BY_NODE, keys.PRESENCE_HIST)
    }

    again = proj.fold(dead(A), partition=0)  # another cleaner, another event id

    assert again.outcome.kind == NODE_DEAD
    assert again.outcome.details == {"incarnation": A, "connections": 0}
    assert again.deliveries == ()
    assert {cf: list(proj.kv.items(cf)) for cf in state} == state


# --- user.terminate --------------------------------------------------------------------------


@pytest.mark.parametrize(("reconnect", "mode"), [(False, "terminate"), (True, "reconnect")])
def test_user_terminate_asks_every_node_to_close_the_users_sockets(
    reconnect: bool, mode: str
) -> None:
    proj = Projection()
    proj.fold(join("u1", "1.1"))
    before = {
        cf: list(proj.kv.items(cf))
        for cf in keys.COLUMN_FAMILIES
        if cf not in (keys.OFFSETS, keys.DEDUP)
    }
    ev = terminate("u1", reconnect=reconnect)

    result = proj.fold(ev)

    assert result.outcome.kind == TERMINATED
    assert (result.outcome.app_id, result.outcome.channel) == (APP, "#server-to-user-u1")
    assert result.outcome.details == {"user_id": "u1", "reconnect": reconnect}
    (d,) = result.deliveries
    assert d.kind == CLOSE_USER
    assert d.data == mode
    assert (d.app_id, d.user_id, d.message_id) == (APP, "u1", ev.event_id)
    # It closes sockets; membership changes only through the leaves that follow.
    assert {cf: list(proj.kv.items(cf)) for cf in before} == before
    # A replay of the same append closes nothing twice.
    replay = proj.fold(ev)
    assert replay.outcome.kind == DUPLICATE
    assert replay.deliveries == ()


# --- rebuild mode and determinism ------------------------------------------------------------


def mixed_log(partitions: int, rounds: int, *, step_ms: int) -> list[Rec]:
    """Joins, leaves, updates, resets, node deaths, terminations and publishes."""
    log = Log(partitions, step_ms=step_ms)
    channels = [f"presence-r{i}" for i in range(3)]
    incs = [A, B]
    recs: list[Rec] = []
    replay: Event | None = None
    for r in range(rounds):
        ch = channels[r % 3]
        inc = incs[r % 2]
        user = f"u{r % 5}"
        keep = Retention(max_count=4)
        history_on = r % 7 != 3
        ev: Event = join(user, f"s{r}", inc, channel=ch, history=history_on, retention=keep)
        recs.append(log.append(ev))
        if r % 9 == 0:
            replay = ev
        if r % 4 == 1:
            recs.append(
                # The previous round's connection leaves.
                log.append(
                    leave(
                        f"u{(r - 1) % 5}",
                        f"s{r - 1}",
                        incs[(r - 1) % 2],
                        channel=channels[(r - 1) % 3],
                        retention=keep,
                    )
                )
            )
        if r % 6 == 2:
            recs.append(log.append(update(user, f"s{r}", inc, info={"r": r}, channel=ch)))
        if r % 10 == 5 and replay is not None:
            recs.append(log.append(replay))
        if r % 13 == 12:
            recs.append(log.append(reset(ch, new_stream_id=str(uuid.UUID(int=r)))))
        if r % 11 == 10:
            recs.append(log.append(terminate(user, reconnect=r % 2 == 0)))
        if r % 5 == 0:
            recs.append(log.append(publish("cache-feed", r)))
        if r % 17 == 16:
            for p in range(partitions):
                recs.append(log.append(dead(inc, event_id=str(uuid.UUID(int=1000 + r))), p))
            # A restarted node gets a new incarnation.
            incs[r % 2] = f"{inc}+{r}"
    return recs


@pytest.mark.parametrize(
    ("batch", "overlay"),
    [(None, True), (1, True), (5, True), (1, False)],
    ids=["one-batch", "record-by-record", "batches-of-5", "no-overlay"],
)
def test_batching_does_not_change_the_state(batch: int | None, overlay: bool) -> None:
    # 7 s steps cross the ten-minute dedupe window, so pruning happens mid-stream too.
    recs = mixed_log(2, 120, step_ms=7_000)
    reference = MemoryKV()
    ref_results = fold_records(reference, recs, partitions=2, batch=1)
    other = MemoryKV()
    results = fold_records(other, recs, partitions=2, batch=batch, overlay=overlay)

    assert snapshot(other) == snapshot(reference)
    assert [r.outcome for r in results] == [r.outcome for r in ref_results]
    assert [r.deliveries for r in results] == [r.deliveries for r in ref_results]
    # The comparison is not vacuous: the log exercised every presence column family.
    snap = snapshot(reference)
    for cf in (
        keys.PRESENCE,
        keys.PRESENCE_USERS,
        keys.BY_NODE,
        keys.DEAD_NODES,
        keys.PSTREAMS,
        keys.PRESENCE_HIST,
        keys.CACHE,
        keys.OFFSETS,
        keys.DEDUP,
    ):
        assert snap[cf], cf
    kinds = {r.outcome.kind for r in ref_results}
    assert {JOINED, LEFT, UPDATED, IGNORED, DUPLICATE, NODE_DEAD, PRESENCE_RESET} <= kinds
    assert TERMINATED in kinds


def test_rebuild_mode_delivers_nothing_and_builds_the_same_state() -> None:
    recs = mixed_log(2, 80, step_ms=1_000)
    live = MemoryKV()
    live_results = fold_records(live, recs, partitions=2, batch=7)
    rebuilt = MemoryKV()
    rebuilt_results = fold_records(rebuilt, recs, partitions=2, batch=7, deliver=False)

    assert all(r.deliveries == () for r in rebuilt_results)
    delivered = {d.kind for r in live_results for d in r.deliveries}
    assert {MEMBER_ADDED, MEMBER_REMOVED, MEMBER_UPDATED, CLOSE_USER} <= delivered
    assert [r.outcome for r in rebuilt_results] == [r.outcome for r in live_results]
    assert snapshot(rebuilt) == snapshot(live)


@pytest.mark.parametrize(
    "event",
    [
        join("u3", "1.9", B),
        leave("u1", "1.1", A),
        update("u1", "1.1", A, info={"x": 1}),
        terminate("u1"),
        dead(A),
    ],
    ids=["join", "leave", "update", "terminate", "node-dead"],
)
def test_rebuild_mode_builds_no_delivery_for_any_presence_event(event: Event) -> None:
    results = {}
    for deliver in (True, False):
        proj = Projection(deliver=deliver)
        proj.fold(join("u1", "1.1", A))
        proj.fold(join("u2", "1.2", A))
        partition = 0 if isinstance(event, NodeDeclaredDead) else None
        results[deliver] = proj.fold(event, partition)
    assert results[True].deliveries != ()
    assert results[False].deliveries == ()
    assert results[False].outcome == results[True].outcome


def test_resuming_from_a_prefix_equals_one_pass() -> None:
    recs = mixed_log(2, 60, step_ms=20_000)
    one_pass = MemoryKV()
    fold_records(one_pass, recs, partitions=2)
    resumed = MemoryKV()
    fold_records(resumed, recs[:31], partitions=2)
    fold_records(resumed, recs[31:], partitions=2)
    assert snapshot(resumed) == snapshot(one_pass)


# --- cache channels (channel fold) -----------------------------------------------------------


@pytest.mark.parametrize(
    "channel",
    ["cache-feed", "private-cache-feed", "private-encrypted-cache-feed", "presence-cache-feed"],
)
def test_http_publish_to_a_cache_channel_is_cached_for_an_hour(channel: str) -> None:
    proj = Projection()
    proj.fold(publish(channel, 1, data='{"x":1}'))
    ts = proj.last.timestamp_ms

    assert cached(proj.kv, APP, channel, ts) == CachedFrame("ev1", '{"x":1}', 3600)
    later = cached(proj.kv, APP, channel, ts + 1_000)
    assert later is not None
    assert later.ttl_s == 3599
    almost = cached(proj.kv, APP, channel, ts + CACHE_TTL_MS - 1_000)
    assert almost is not None
    assert 0 < almost.ttl_s <= 1
    assert cached(proj.kv, APP, channel, ts + CACHE_TTL_MS) is None
    assert cached(proj.kv, APP, channel, ts + CACHE_TTL_MS + 60_000) is None


def test_cached_event_is_served_until_the_full_hour_has_passed() -> None:
    """Spec 01 §3.9: kept for 3600 s, so half a second before the hour it is still served."""
    proj = Projection()
    proj.fold(publish("cache-feed", 1))
    ts = proj.last.timestamp_ms
    assert cached(proj.kv, APP, "cache-feed", ts + CACHE_TTL_MS - 500) is not None


def test_a_later_publish_replaces_the_cached_event_and_restarts_its_hour() -> None:
    proj = Projection(step_ms=1_800_000)  # half an hour between records
    proj.fold(publish("cache-feed", 1))
    proj.fold(publish("cache-feed", 2))
    ts = proj.last.timestamp_ms
    assert cached(proj.kv, APP, "cache-feed", ts) == CachedFrame("ev2", "payload-2", 3600)
    assert cached(proj.kv, APP, "cache-feed", ts + CACHE_TTL_MS - 1_000) is not None


def test_a_replayed_publish_does_not_refresh_the_cache() -> None:
    proj = Projection(step_ms=300_000)  # within the ten-minute dedupe window
    ev = publish("cache-feed", 1)
    proj.fold(ev)
    first_ts = proj.last.timestamp_ms
    replay = proj.fold(ev)
    assert replay.outcome.kind == DUPLICATE
    now = proj.last.timestamp_ms
    assert now - first_ts == 300_000
    frame = cached(proj.kv, APP, "cache-feed", now)
    assert frame is not None
    assert frame.ttl_s == 3600 - 300


def test_client_events_are_not_cached() -> None:
    proj = Projection()
    ev = publish(
        "private-cache-feed",
        1,
        name="client-typing",
        client_event=True,
        origin=Origin(node=A, socket_id="1.1"),
    )
    result = proj.fold(ev)
    assert result.outcome.kind != IGNORED  # it was published, just not cached
    assert cached(proj.kv, APP, "private-cache-feed", proj.last.timestamp_ms) is None
    assert list(proj.kv.items(keys.CACHE)) == []


@pytest.mark.parametrize("channel", ["feed", "private-feed", "presence-feed", "my-cache-feed"])
def test_non_cache_channels_are_not_cached(channel: str) -> None:
    proj = Projection()
    proj.fold(publish(channel, 1))
    assert cached(proj.kv, APP, channel, proj.last.timestamp_ms) is None
    assert list(proj.kv.items(keys.CACHE)) == []
