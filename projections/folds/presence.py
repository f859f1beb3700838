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
import uuid
from typing import Any

from projections.folds.channel import (
    ChannelState,
    FoldResult,
    RecordContext,
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
        return FoldResult(
            Outcome(
                kind=IGNORED,
                app_id=ev.app_id,
                channel=ev.channel,
                details={"reason": "dead_incarnation"},
            )
        )
    conn = keys.connection_key(ck, ev.user_id, ev.incarnation, ev.socket_id)
    if kv.get(keys.PRESENCE, conn) is not None:
        return FoldResult(
            Outcome(
                kind=IGNORED,
                app_id=ev.app_id,
                channel=ev.channel,
                details={"reason": "already_joined"},
            )
        )
    kv.put(keys.PRESENCE, conn, dumps({"i": ev.user_info_json, "o": ctx.offset}))
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
        return FoldResult(
            Outcome(kind=JOINED, app_id=ev.app_id, channel=ev.channel, details={"edge": None})
        )
    kv.put(keys.PRESENCE_USERS, member_key, dumps({"n": 1, "i": ev.user_info_json}))
    info = json.loads(ev.user_info_json) if ev.user_info_json is not None else {}
    details: dict[str, Any] = {"edge": MEMBER_ADDED}
    if ev.flags.presence_history:
        details["presence_serial"] = _record(
            kv,
            ctx,
            ck,
            ev.event_id,
            ev.retention,
            event=MEMBER_ADDED,
            cause="join",
            user_id=ev.user_id,
            socket_id=ev.socket_id,
            user_info=info,
            dead_node_id=None,
        )
    data = dumps({"user_id": ev.user_id, "user_info": info}).decode()
    deliveries = (
        (_edge(ev.app_id, ev.channel, MEMBER_ADDED, data, ev.user_id, ev.event_id, ctx),)
        if ctx.deliver
        else ()
    )
    return FoldResult(
        Outcome(kind=JOINED, app_id=ev.app_id, channel=ev.channel, details=details), deliveries
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
    history: bool,
    retention: Retention,
    dead_node_id: str | None = None,
    event_id: str | None = None,
) -> FoldResult:
    ck = keys.channel_prefix(app_id, channel)
    conn = keys.connection_key(ck, user_id, incarnation, socket_id)
    raw_conn = kv.get(keys.PRESENCE, conn)
    if raw_conn is None:
        return FoldResult(
            Outcome(kind=IGNORED, app_id=app_id, channel=channel, details={"reason": "not_joined"})
        )
    kv.delete(keys.PRESENCE, conn)
    kv.delete(keys.BY_NODE, keys.by_node_key(ctx.partition, incarnation, ck, user_id, socket_id))
    member_key = keys.member_key(ck, user_id)
    raw = kv.get(keys.PRESENCE_USERS, member_key)
    member: dict[str, Any] = json.loads(raw) if raw is not None else {"n": 1, "i": None}
    if member["n"] > 1:
        member["n"] -= 1
        kv.put(keys.PRESENCE_USERS, member_key, dumps(member))
        return FoldResult(
            Outcome(kind=LEFT, app_id=app_id, channel=channel, details={"edge": None})
        )
    kv.delete(keys.PRESENCE_USERS, member_key)
    details: dict[str, Any] = {"edge": MEMBER_REMOVED}
    if history:
        info = json.loads(member["i"]) if member["i"] is not None else {}
        details["presence_serial"] = _record(
            kv,
            ctx,
            ck,
            event_id,
            retention,
            event=MEMBER_REMOVED,
            cause=HISTORY_CAUSES.get(cause, "disconnect"),
            user_id=user_id,
            socket_id=socket_id,
            user_info=info,
            dead_node_id=dead_node_id,
        )
    data = dumps({"user_id": user_id}).decode()
    deliveries = (
        (_edge(app_id, channel, MEMBER_REMOVED, data, user_id, event_id, ctx),)
        if ctx.deliver
        else ()
    )
    return FoldResult(
        Outcome(kind=LEFT, app_id=app_id, channel=channel, details=details), deliveries
    )


def _update(kv: KV, ctx: RecordContext, ev: PresenceMemberUpdated) -> FoldResult:
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    conn = keys.connection_key(ck, ev.user_id, ev.incarnation, ev.socket_id)
    raw_conn = kv.get(keys.PRESENCE, conn)
    if raw_conn is None:
        return FoldResult(
            Outcome(
                kind=IGNORED, app_id=ev.app_id, channel=ev.channel, details={"reason": "not_joined"}
            )
        )
    connection = json.loads(raw_conn)
    connection["i"] = ev.user_info_json
    kv.put(keys.PRESENCE, conn, dumps(connection))
    member_key = keys.member_key(ck, ev.user_id)
    member = json.loads(kv.get(keys.PRESENCE_USERS, member_key) or b'{"n":1,"i":null}')
    member["i"] = ev.user_info_json
    kv.put(keys.PRESENCE_USERS, member_key, dumps(member))
    info = json.loads(ev.user_info_json) if ev.user_info_json is not None else {}
    details: dict[str, Any] = {"edge": MEMBER_UPDATED}
    if ev.flags.presence_history:
        details["presence_serial"] = _record(
            kv,
            ctx,
            ck,
            ev.event_id,
            ev.retention,
            event=MEMBER_UPDATED,
            cause="join",
            user_id=ev.user_id,
            socket_id=ev.socket_id,
            user_info=info,
            dead_node_id=None,
        )
    data = dumps({"user_id": ev.user_id, "user_info": info}).decode()
    deliveries = (
        (_edge(ev.app_id, ev.channel, MEMBER_UPDATED, data, ev.user_id, ev.event_id, ctx),)
        if ctx.deliver
        else ()
    )
    return FoldResult(
        Outcome(kind=UPDATED, app_id=ev.app_id, channel=ev.channel, details=details), deliveries
    )


def _node_dead(kv: KV, ctx: RecordContext, ev: NodeDeclaredDead) -> FoldResult:
    """Remove the dead incarnation's connections of this partition; fence its later joins."""
    kv.put(keys.DEAD_NODES, keys.dead_node_key(ctx.partition, ev.incarnation), keys.u64(ctx.offset))
    prefix = keys.by_node_prefix(ctx.partition, ev.incarnation)
    deliveries: list[Delivery] = []
    removed = 0
    for key, _ in list(kv.scan(keys.BY_NODE, prefix, keys.prefix_end(prefix))):
        app_id, channel, user_id, socket_id = keys.split_by_node_key(key)
        head = _presence_head(kv, keys.channel_prefix(app_id, channel))
        result = _leave(
            kv,
            ctx,
            app_id,
            channel,
            user_id,
            ev.incarnation,
            socket_id,
            cause="orphan_cleanup",
            # A cleaner does not know the channel's policy; keep recording where the channel
            # already has a presence-history stream.
            history=head is not None,
            retention=Retention(),
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
        head = StreamHead(stream_id=_presence_stream_id(seed, app_id, channel), generation=1)
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
    kv.put(keys.PRESENCE_HIST, keys.history_key(ck, head.generation, p), row.encode())
    head.next_h = p + 1
    head.retained_count += 1
    head.retained_bytes += row.size
    if head.oldest_serial is None:
        head.oldest_serial, head.oldest_ts = p, ts
    head.newest_serial, head.newest_ts = p, ts
    _retain(kv, ck, head, retention, ts)
    kv.put(keys.PSTREAMS, ck, head.encode())
    return p


def _presence_stream_id(seed: str, app_id: str, channel: str) -> str:
    """First presence generation: UUIDv5 of the opening record, distinct from the message stream."""
    try:
        namespace = uuid.UUID(seed)
    except ValueError:
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, seed)
    return str(uuid.uuid5(namespace, f"presence\x00{app_id}\x00{channel}"))


def _retain(kv: KV, ck: bytes, head: StreamHead, r: Retention, now_ms: int) -> None:
    """Drop the oldest transitions while they break the retention in force (spec 03 §2.3)."""
    cutoff = now_ms - r.window_s * 1000 if r.window_s is not None else None

    def breaks(oldest_ts: int | None) -> bool:
        if head.retained_count == 0:
            return False
        if cutoff is not None and oldest_ts is not None and oldest_ts < cutoff:
            return True
        if r.max_count is not None and head.retained_count > r.max_count:
            return True
        return r.max_bytes is not None and head.retained_bytes > r.max_bytes

    if not breaks(head.oldest_ts):
        return
    gen_prefix = keys.history_gen_prefix(ck, head.generation)
    for key, raw in list(kv.scan(keys.PRESENCE_HIST, gen_prefix, keys.prefix_end(gen_prefix))):
        row = HistoryRow.decode(raw)
        if not breaks(row.published_at_ms):
            break
        kv.delete(keys.PRESENCE_HIST, key)
        head.retained_count -= 1
        head.retained_bytes -= row.size
        serial = keys.read_u64(key, len(gen_prefix))
        head.evicted_through_serial = max(head.evicted_through_serial or 0, serial)
        head.evicted_through_time_ms = max(head.evicted_through_time_ms or 0, row.published_at_ms)
    head.oldest_serial = head.oldest_ts = None
    for key, raw in kv.scan(keys.PRESENCE_HIST, gen_prefix, keys.prefix_end(gen_prefix)):
        head.oldest_serial = keys.read_u64(key, len(gen_prefix))
        head.oldest_ts = HistoryRow.decode(raw).published_at_ms
        break
    if head.oldest_serial is None:
        head.newest_serial = head.newest_ts = None


def _reset(kv: KV, ctx: RecordContext, ev: PresenceHistoryReset) -> FoldResult:
    """New presence generation; retained transitions are dropped, live membership stays."""
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    old = _presence_head(kv, ck)
    purged = 0
    if old is not None:
        purged = old.retained_count
        gen_prefix = keys.history_gen_prefix(ck, old.generation)
        for key, _ in list(kv.scan(keys.PRESENCE_HIST, gen_prefix, keys.prefix_end(gen_prefix))):
            kv.delete(keys.PRESENCE_HIST, key)
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
