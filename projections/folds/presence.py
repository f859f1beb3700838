"""The presence fold: connection-level membership, user-level edges, presence history, node cleanup.

A connection joins or leaves a presence channel by a ``presence.*`` record appended by the node
holding it. The fold keeps every connection (``presence``), the user-level member with its
connection count (``presence_users``) and an index by node incarnation (``by_node``). A user's
first connection yields ``member_added``, its last one ``member_removed`` (Pusher semantics,
spec 01 §3.8); with ``flags.presence_history`` each edge also gets the next presence serial P
(spec 03 §5.1). ``node.dead`` removes every connection of that incarnation in this partition
and fences later joins from it (spec 05 §9.3). ``user.terminate`` asks every node to close the
user's sockets; it changes no state.

Deterministic like the channel fold: everything comes from the record and its log position.
"""

from __future__ import annotations

import json
from typing import Any

from projections.folds.channel import (
    ChannelState,
    FoldResult,
    RecordContext,
    append_row,
    apply_retention,
    delete_generation,
    fold_record,
    seen_event,
)
from projections.folds.state import (
    CLOSE_USER,
    IGNORED,
    JOINED,
    LEFT,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    MEMBER_UPDATED,
    NODE_DEAD,
    PRESENCE_RESET,
    TERMINATED,
    UPDATED,
    Delivery,
    HistoryRow,
    Outcome,
    StreamHead,
    dumps,
    presence_stream_id,
)
from projections.store import keys
from projections.store.kv import KV
from sockudo.events.channel import Retention
from sockudo.events.presence import (
    NodeDeclaredDead,
    PresenceEvent,
    PresenceHistoryReset,
    PresenceMemberJoined,
    PresenceMemberLeft,
    PresenceMemberUpdated,
)
from sockudo.events.users import UserConnectionsTerminated

PRESENCE_EVENT_TYPES = (
    PresenceMemberJoined,
    PresenceMemberLeft,
    PresenceMemberUpdated,
    PresenceHistoryReset,
    NodeDeclaredDead,
    UserConnectionsTerminated,
)
"""The events this fold interprets."""

HISTORY_CAUSES = {
    "unsubscribe": "disconnect",
    "disconnect": "disconnect",
    "terminated": "forced_disconnect",
    "timeout": "timeout",
    "orphan_cleanup": "orphan_cleanup",
}
"""``PresenceMemberLeft.cause`` → the ``cause`` presence history records (spec 03 §5.1)."""


def fold_presence(
    state: ChannelState, ctx: RecordContext, event: PresenceEvent | UserConnectionsTerminated
) -> FoldResult:
    """Apply one presence record; keep its outcome under its offset; return what to deliver."""
    return fold_record(state, ctx, event, _apply)


def _apply(
    state: ChannelState, ctx: RecordContext, event: PresenceEvent | UserConnectionsTerminated
) -> FoldResult:
    kv = state.kv
    seen = seen_event(kv, ctx, event.event_id)
    if seen is not None:
        return FoldResult(seen)
    if isinstance(event, PresenceMemberJoined):
        result = _join(kv, ctx, event)
    elif isinstance(event, PresenceMemberLeft):
        result = _leave(
            kv,
            ctx,
            event.app_id,
            event.channel,
            event.user_id,
            event.incarnation,
            event.socket_id,
            cause=event.cause,
            history=event.flags.presence_history,
            retention=event.retention,
            event_id=event.event_id,
        )
    elif isinstance(event, PresenceMemberUpdated):
        result = _update(kv, ctx, event)
    elif isinstance(event, PresenceHistoryReset):
        result = _reset(kv, ctx, event)
    elif isinstance(event, NodeDeclaredDead):
        result = _node_dead(kv, ctx, event)
    elif isinstance(event, UserConnectionsTerminated):
        result = _terminate(ctx, event)
    else:  # pragma: no cover - the projector dispatches by PRESENCE_EVENT_TYPES
        raise TypeError(f"not a presence event: {type(event).__name__}")
    kv.put(keys.DEDUP, keys.dedup_key(ctx.partition, event.event_id), keys.u64(ctx.offset))
    return result


# --- joins and leaves ----------------------------------------------------------------------


def _join(kv: KV, ctx: RecordContext, ev: PresenceMemberJoined) -> FoldResult:
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    if kv.get(keys.DEAD_NODES, keys.dead_node_key(ctx.partition, ev.incarnation)) is not None:
        # A join that raced its node's death: the node is gone, so is the connection.
        return _outcome(IGNORED, ev.app_id, ev.channel, reason="dead_incarnation")
    conn = keys.connection_key(ck, ev.user_id, ev.incarnation, ev.socket_id)
    if kv.get(keys.PRESENCE, conn) is not None:
        return _outcome(IGNORED, ev.app_id, ev.channel, reason="already_joined")
    record: dict[str, Any] = {"i": ev.user_info_json, "o": ctx.offset}
    if ev.flags.presence_history:
        # The channel's presence-history policy as this join carried it: a cleaner that
        # removes the connection later records its leave under the same policy.
        r = ev.retention
        record["r"] = [r.window_s, r.max_count, r.max_bytes]
    kv.put(keys.PRESENCE, conn, dumps(record))
    kv.put(
        keys.BY_NODE,
        keys.by_node_key(ctx.partition, ev.incarnation, ck, ev.user_id, ev.socket_id),
        b"",
    )
    member_key = keys.member_key(ck, ev.user_id)
    raw = kv.get(keys.PRESENCE_USERS, member_key)
    if raw is not None:
        member = json.loads(raw)
        member["n"] += 1  # another tab of a present user: no edge, first info wins
        kv.put(keys.PRESENCE_USERS, member_key, dumps(member))
        return _outcome(JOINED, ev.app_id, ev.channel, edge=None)
    kv.put(keys.PRESENCE_USERS, member_key, dumps({"n": 1, "i": ev.user_info_json}))
    return _member_edge(
        kv,
        ctx,
        JOINED,
        MEMBER_ADDED,
        ev.app_id,
        ev.channel,
        ev.user_id,
        ev.socket_id,
        _info(ev.user_info_json),
        event_id=ev.event_id,
        retention=ev.retention if ev.flags.presence_history else None,
        cause="join",
    )


def _leave(
    kv: KV,
    ctx: RecordContext,
    app_id: str,
    channel: str,
    user_id: str,
    incarnation: str,
    socket_id: str,
    *,
    cause: str,
    history: bool | None,
    retention: Retention | None,
    dead_node_id: str | None = None,
    event_id: str | None = None,
) -> FoldResult:
    """``history``/``retention`` ``None``: the presence-history policy the connection's join
    carried (a cleaner does not know the channel's)."""
    ck = keys.channel_prefix(app_id, channel)
    conn = keys.connection_key(ck, user_id, incarnation, socket_id)
    raw_conn = kv.get(keys.PRESENCE, conn)
    if raw_conn is None:
        return _outcome(IGNORED, app_id, channel, reason="not_joined")
    if history is None or retention is None:
        policy = json.loads(raw_conn).get("r")
        history = policy is not None
        retention = Retention(*policy) if policy is not None else Retention()
    kv.delete(keys.PRESENCE, conn)
    kv.delete(keys.BY_NODE, keys.by_node_key(ctx.partition, incarnation, ck, user_id, socket_id))
    member_key = keys.member_key(ck, user_id)
    raw = kv.get(keys.PRESENCE_USERS, member_key)
    member: dict[str, Any] = json.loads(raw) if raw is not None else {"n": 1, "i": None}
    if member["n"] > 1:
        member["n"] -= 1
        kv.put(keys.PRESENCE_USERS, member_key, dumps(member))
        return _outcome(LEFT, app_id, channel, edge=None)
    kv.delete(keys.PRESENCE_USERS, member_key)
    return _member_edge(
        kv,
        ctx,
        LEFT,
        MEMBER_REMOVED,
        app_id,
        channel,
        user_id,
        socket_id,
        _info(member["i"]),
        event_id=event_id,
        retention=retention if history else None,
        cause=HISTORY_CAUSES.get(cause, "disconnect"),
        dead_node_id=dead_node_id,
    )


def _update(kv: KV, ctx: RecordContext, ev: PresenceMemberUpdated) -> FoldResult:
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    conn = keys.connection_key(ck, ev.user_id, ev.incarnation, ev.socket_id)
    raw_conn = kv.get(keys.PRESENCE, conn)
    if raw_conn is None:
        return _outcome(IGNORED, ev.app_id, ev.channel, reason="not_joined")
    connection = json.loads(raw_conn)
    connection["i"] = ev.user_info_json
    kv.put(keys.PRESENCE, conn, dumps(connection))
    member_key = keys.member_key(ck, ev.user_id)
    member = json.loads(kv.get(keys.PRESENCE_USERS, member_key) or b'{"n":1,"i":null}')
    member["i"] = ev.user_info_json
    kv.put(keys.PRESENCE_USERS, member_key, dumps(member))
    return _member_edge(
        kv,
        ctx,
        UPDATED,
        MEMBER_UPDATED,
        ev.app_id,
        ev.channel,
        ev.user_id,
        ev.socket_id,
        _info(ev.user_info_json),
        event_id=ev.event_id,
        retention=ev.retention if ev.flags.presence_history else None,
        cause="join",
    )


def _info(user_info_json: str | None) -> Any:
    return json.loads(user_info_json) if user_info_json is not None else {}


def _outcome(kind: str, app_id: str, channel: str, **details: Any) -> FoldResult:
    return FoldResult(Outcome(kind=kind, app_id=app_id, channel=channel, details=details))


def _member_edge(
    kv: KV,
    ctx: RecordContext,
    kind: str,
    edge: str,
    app_id: str,
    channel: str,
    user_id: str,
    socket_id: str,
    info: Any,
    *,
    event_id: str | None,
    retention: Retention | None,
    cause: str,
    dead_node_id: str | None = None,
) -> FoldResult:
    """A user-level edge: its presence-history row (``retention`` given) and its delivery."""
    details: dict[str, Any] = {"edge": edge}
    if retention is not None:
        details["presence_serial"] = _record(
            kv,
            ctx,
            keys.channel_prefix(app_id, channel),
            event_id,
            retention,
            event=edge,
            cause=cause,
            user_id=user_id,
            socket_id=socket_id,
            user_info=info,
            dead_node_id=dead_node_id,
        )
    body = (
        {"user_id": user_id} if edge == MEMBER_REMOVED else {"user_id": user_id, "user_info": info}
    )
    deliveries = (
        (_edge(app_id, channel, edge, dumps(body).decode(), user_id, event_id, ctx),)
        if ctx.deliver
        else ()
    )
    return FoldResult(
        Outcome(kind=kind, app_id=app_id, channel=channel, details=details), deliveries
    )


def _node_dead(kv: KV, ctx: RecordContext, ev: NodeDeclaredDead) -> FoldResult:
    """Remove the dead incarnation's connections of this partition; fence its later joins."""
    kv.put(keys.DEAD_NODES, keys.dead_node_key(ctx.partition, ev.incarnation), keys.u64(ctx.offset))
    prefix = keys.by_node_prefix(ctx.partition, ev.incarnation)
    deliveries: list[Delivery] = []
    removed = 0
    for key, _ in list(kv.scan(keys.BY_NODE, prefix, keys.prefix_end(prefix))):
        app_id, channel, user_id, socket_id = keys.split_by_node_key(key)
        result = _leave(
            kv,
            ctx,
            app_id,
            channel,
            user_id,
            ev.incarnation,
            socket_id,
            cause="orphan_cleanup",
            history=None,  # the join's policy
            retention=None,
            dead_node_id=ev.incarnation,
            event_id=ev.event_id,
        )
        deliveries.extend(result.deliveries)
        removed += 1
    return FoldResult(
        Outcome(kind=NODE_DEAD, details={"incarnation": ev.incarnation, "connections": removed}),
        tuple(deliveries),
    )


def _terminate(ctx: RecordContext, ev: UserConnectionsTerminated) -> FoldResult:
    outcome = Outcome(
        kind=TERMINATED,
        app_id=ev.app_id,
        channel=ev.channel,
        details={"user_id": ev.user_id, "reconnect": ev.reconnect},
    )
    if not ctx.deliver:
        return FoldResult(outcome)
    mode = "reconnect" if ev.reconnect else "terminate"
    delivery = _edge(ev.app_id, ev.channel, CLOSE_USER, mode, ev.user_id, ev.event_id, ctx)
    return FoldResult(outcome, (delivery,))


def _edge(
    app_id: str,
    channel: str,
    kind: str,
    data: str,
    user_id: str,
    event_id: str | None,
    ctx: RecordContext,
) -> Delivery:
    return Delivery(
        app_id=app_id,
        channel=channel,
        event=f"pusher_internal:{kind}",
        data=data,
        data_is_json=True,
        message_id=event_id or "",
        stream_id=None,
        serial=None,
        history_serial=None,
        published_at_ms=ctx.timestamp_ms,
        exclude_socket_id=None,
        user_id=user_id,
        client_event=False,
        extras_json=None,
        tags=None,
        kind=kind,
    )


# --- presence history ----------------------------------------------------------------------


def _presence_head(kv: KV, ck: bytes) -> StreamHead | None:
    raw = kv.get(keys.PSTREAMS, ck)
    return StreamHead.decode(raw) if raw is not None else None


def _record(
    kv: KV,
    ctx: RecordContext,
    ck: bytes,
    event_id: str | None,
    retention: Retention,
    *,
    event: str,
    cause: str,
    user_id: str,
    socket_id: str | None,
    user_info: Any,
    dead_node_id: str | None,
) -> int:
    """Append one transition to the channel's presence-history stream; returns its serial P."""
    head = _presence_head(kv, ck)
    if head is None:
        app_id, channel = keys.split_channel_prefix(ck)
        seed = event_id or f"{ctx.partition}:{ctx.offset}"
        head = StreamHead(stream_id=presence_stream_id(seed, app_id, channel), generation=1)
    p = head.next_h
    ts = ctx.timestamp_ms
    transition = {
        "stream_id": head.stream_id,
        "serial": p,
        "published_at_ms": ts,
        "event": event,
        "cause": cause,
        "user_id": user_id,
        "connection_id": socket_id,
        "user_info": user_info,
        "dead_node_id": dead_node_id,
    }
    row = HistoryRow(dumps(transition), ts, ctx.offset)
    append_row(kv, keys.PRESENCE_HIST, ck, head, p, row)
    apply_retention(kv, keys.PRESENCE_HIST, ck, head, retention, ts)
    kv.put(keys.PSTREAMS, ck, head.encode())
    return p


def _reset(kv: KV, ctx: RecordContext, ev: PresenceHistoryReset) -> FoldResult:
    """New presence generation; retained transitions are dropped, live membership stays."""
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    old = _presence_head(kv, ck)
    purged = 0
    if old is not None:
        purged = old.retained_count
        delete_generation(kv, ck, old.generation, (keys.PRESENCE_HIST,))
    new = StreamHead(
        stream_id=ev.new_stream_id,
        generation=(old.generation + 1) if old is not None else 1,
        last_transition_at_ms=ctx.timestamp_ms,
    )
    kv.put(keys.PSTREAMS, ck, new.encode())
    return FoldResult(
        Outcome(
            kind=PRESENCE_RESET,
            app_id=ev.app_id,
            channel=ev.channel,
            stream_id=new.stream_id,
            details={
                "previous_stream_id": old.stream_id if old is not None else None,
                "purged_events": purged,
            },
        )
    )
