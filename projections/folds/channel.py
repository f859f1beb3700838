"""The channel fold: serials, history rows, generations, purge floors and idempotency.

``fold(kv, ctx, event)`` applies one decoded ``channel-events`` record to the projection state
behind ``kv`` and says what it meant. It is deterministic: everything it needs comes from the
record (its event, offset and log-append time), never from the clock, configuration or
randomness, so every node and every rebuild derive the same serials (spec 05 §6.1, §6.4).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from projections.folds.state import (
    APPLIED,
    CONFLICT,
    DUPLICATE,
    EPHEMERAL,
    GENESIS,
    HEALTHY,
    PURGED,
    REBASED,
    RESET,
    STATE_MARKED,
    Delivery,
    HistoryRow,
    Outcome,
    StreamHead,
    dumps,
)
from projections.store import keys
from projections.store.kv import KV
from sockudo.events.channel import (
    ChannelEvent,
    HistoryPurged,
    HistoryReset,
    MessagePublished,
    PartitionGenesis,
    PartitionRebased,
    StreamStateMarked,
)

DEDUP_WINDOW_MS = 600_000
"""Event-id dedupe and per-offset outcomes are kept this long in record time (spec 05 §6.6)."""
_PRUNE_BUCKET_MS = 60_000

# Regions of the ``dedup`` and ``idem`` column families: entries and their expiry index.
_DEDUP_ENTRY = b"e"
_DEDUP_BY_TIME = b"t"
_IDEM_BY_EXPIRY = b"\xff"  # UTF-8 app ids never contain 0xFF, so this region is disjoint.


@dataclass(frozen=True, slots=True)
class RecordContext:
    """Where a record sits in the log; ``timestamp_ms`` is the fold's only notion of now."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    previous_timestamp_ms: int | None
    """Log-append time of the partition's previous record (``None`` for its first)."""
    partitions: int
    partitioner: Callable[[bytes, int], int]
    """The log's partition function: ``partitioner(key, partitions) -> partition``."""


@dataclass(frozen=True, slots=True)
class FoldResult:
    outcome: Outcome
    deliveries: tuple[Delivery, ...] = ()


def first_stream_id(event_id: str, app_id: str, channel: str) -> str:
    """``stream_id`` of a generation opened without an appender-made id (UUIDv5, spec 05 §6.3)."""
    return str(uuid.uuid5(uuid.UUID(event_id), f"{app_id}\x00{channel}"))


def read_head(kv: KV, ck: bytes) -> StreamHead | None:
    raw = kv.get(keys.STREAMS, ck)
    return StreamHead.decode(raw) if raw is not None else None


def fold(kv: KV, ctx: RecordContext, event: ChannelEvent) -> FoldResult:
    """Apply one record; record its outcome under its offset; return what to deliver."""
    _prune_expired(kv, ctx)
    result = _apply(kv, ctx, event)
    kv.put(
        keys.OFFSETS,
        keys.offset_key(ctx.partition, ctx.offset),
        keys.u64(ctx.timestamp_ms) + result.outcome.encode(),
    )
    return result


def decode_offset_outcome(raw: bytes) -> Outcome:
    return Outcome.decode(raw[8:])


def _apply(kv: KV, ctx: RecordContext, event: ChannelEvent) -> FoldResult:
    if isinstance(event, MessagePublished):
        return _publish(kv, ctx, event)
    if isinstance(event, HistoryReset):
        return _reset(kv, ctx, event)
    if isinstance(event, HistoryPurged):
        return _purge(kv, ctx, event)
    if isinstance(event, StreamStateMarked):
        return _mark_state(kv, ctx, event)
    if isinstance(event, PartitionRebased):
        return _rebase(kv, ctx, event)
    if isinstance(event, PartitionGenesis):
        return FoldResult(Outcome(kind=GENESIS, details={"event_id": event.event_id}))
    raise TypeError(f"not a channel event: {type(event).__name__}")


# --- publish -------------------------------------------------------------------------------


def _publish(kv: KV, ctx: RecordContext, ev: MessagePublished) -> FoldResult:
    seen = _seen_event(kv, ctx, ev.event_id)
    if seen is not None:
        return FoldResult(seen)
    idem = ev.idempotency
    idem_key = b""
    if idem is not None:
        idem_key = keys.idem_key(ev.app_id, idem.ns, idem.key, ev.channel)
        raw = kv.get(keys.IDEM, idem_key)
        if raw is not None:
            entry = json.loads(raw)
            if entry["x"] > ctx.timestamp_ms:
                if entry["f"] != idem.fingerprint:
                    return FoldResult(
                        Outcome(kind=CONFLICT, app_id=ev.app_id, channel=ev.channel)
                    )
                original = Outcome.decode(entry["o"].encode())
                return FoldResult(original.as_original(entry["at"]))
            kv.delete(keys.IDEM, _idem_expiry_key(entry["x"], idem_key))

    ck = keys.channel_prefix(ev.app_id, ev.channel)
    ts = ctx.timestamp_ms
    if ev.flags.ephemeral:
        outcome = Outcome(
            kind=EPHEMERAL,
            app_id=ev.app_id,
            channel=ev.channel,
            message_id=ev.message_id,
            published_at_ms=ts,
        )
        delivery = _delivery(ev, None, None, None, ts)
    else:
        head = read_head(kv, ck) or StreamHead(
            stream_id=first_stream_id(ev.event_id, ev.app_id, ev.channel), generation=1
        )
        d = head.next_d
        h: int | None = None
        head = head.with_(next_d=d + 1)
        if ev.flags.persist:
            h = head.next_h
            row = _history_row(ev, head.stream_id, h, ts, ctx.offset)
            kv.put(keys.HISTORY, keys.history_key(ck, head.generation, h), row.encode())
            kv.put(keys.HISTORY_TS, keys.history_ts_key(ck, head.generation, ts, h), b"")
            head = head.with_(
                next_h=h + 1,
                retained_count=head.retained_count + 1,
                retained_bytes=head.retained_bytes + row.size,
                oldest_serial=head.oldest_serial if head.oldest_serial is not None else h,
                oldest_ts=head.oldest_ts if head.oldest_ts is not None else ts,
                newest_serial=h,
                newest_ts=ts,
            )
            head = _apply_retention(kv, ck, head, ev, ts)
        kv.put(keys.STREAMS, ck, head.encode())
        outcome = Outcome(
            kind=APPLIED,
            app_id=ev.app_id,
            channel=ev.channel,
            message_id=ev.message_id,
            stream_id=head.stream_id,
            delivery_serial=d,
            history_serial=h,
            published_at_ms=ts,
        )
        delivery = _delivery(ev, head.stream_id, d, h, ts)

    _remember_event(kv, ctx, ev.event_id)
    if idem is not None:
        expires = ts + idem.ttl_ms
        entry = {"f": idem.fingerprint, "x": expires, "at": ctx.offset}
        entry["o"] = outcome.encode().decode()
        kv.put(keys.IDEM, idem_key, dumps(entry))
        kv.put(keys.IDEM, _idem_expiry_key(expires, idem_key), b"")
    return FoldResult(outcome, (delivery,))


def _history_row(
    ev: MessagePublished, stream_id: str, serial: int, ts: int, offset: int
) -> HistoryRow:
    message: dict[str, object] = {
        "event": ev.name,
        "channel": ev.channel,
        "data": json.loads(ev.data) if ev.data_is_json else ev.data,
        "message_id": ev.message_id,
        "stream_id": stream_id,
        "serial": serial,
    }
    if ev.client_event and ev.origin.user_id is not None:
        message["user_id"] = ev.origin.user_id
    if ev.tags:
        message["tags"] = dict(ev.tags)
    if ev.extras_json is not None:
        message["extras"] = json.loads(ev.extras_json)
    size = len(dumps(message))
    return HistoryRow(message=message, published_at_ms=ts, offset=offset, size=size)


def _delivery(
    ev: MessagePublished, stream_id: str | None, d: int | None, h: int | None, ts: int
) -> Delivery:
    return Delivery(
        app_id=ev.app_id,
        channel=ev.channel,
        event=ev.name,
        data=ev.data,
        data_is_json=ev.data_is_json,
        message_id=ev.message_id,
        stream_id=stream_id,
        serial=d,
        history_serial=h,
        published_at_ms=ts,
        exclude_socket_id=ev.origin.socket_id,
        user_id=ev.origin.user_id,
        client_event=ev.client_event,
        extras_json=ev.extras_json,
        tags=ev.tags,
    )


def _apply_retention(
    kv: KV, ck: bytes, head: StreamHead, ev: MessagePublished, now_ms: int
) -> StreamHead:
    """Drop the oldest rows while they break the record's retention policy (spec 03 §2.3)."""
    r = ev.retention
    cutoff = now_ms - r.window_s * 1000 if r.window_s is not None else None

    def over(h: StreamHead) -> bool:
        if h.retained_count == 0:
            return False
        if cutoff is not None and h.oldest_ts is not None and h.oldest_ts < cutoff:
            return True
        if r.max_count is not None and h.retained_count > r.max_count:
            return True
        return r.max_bytes is not None and h.retained_bytes > r.max_bytes

    if not over(head):
        return head
    gen_prefix = keys.history_gen_prefix(ck, head.generation)
    for key, raw in kv.scan(keys.HISTORY, gen_prefix, keys.prefix_end(gen_prefix)):
        if not over(head):
            break
        head = _evict(kv, ck, head, keys.read_u64(key, len(gen_prefix)), HistoryRow.decode(raw))
    return _refresh_floor(kv, ck, head)


def _evict(kv: KV, ck: bytes, head: StreamHead, serial: int, row: HistoryRow) -> StreamHead:
    kv.delete(keys.HISTORY, keys.history_key(ck, head.generation, serial))
    kv.delete(
        keys.HISTORY_TS, keys.history_ts_key(ck, head.generation, row.published_at_ms, serial)
    )
    return head.with_(
        retained_count=head.retained_count - 1,
        retained_bytes=head.retained_bytes - row.size,
        evicted_through_serial=max(head.evicted_through_serial or 0, serial),
        evicted_through_time_ms=max(head.evicted_through_time_ms or 0, row.published_at_ms),
    )


def _refresh_floor(kv: KV, ck: bytes, head: StreamHead) -> StreamHead:
    """Recompute the oldest retained row after evictions."""
    gen_prefix = keys.history_gen_prefix(ck, head.generation)
    for key, raw in kv.scan(keys.HISTORY, gen_prefix, keys.prefix_end(gen_prefix)):
        row = HistoryRow.decode(raw)
        return head.with_(
            oldest_serial=keys.read_u64(key, len(gen_prefix)), oldest_ts=row.published_at_ms
        )
    return head.with_(oldest_serial=None, oldest_ts=None, newest_serial=None, newest_ts=None)


# --- stream control ------------------------------------------------------------------------


def _reset(kv: KV, ctx: RecordContext, ev: HistoryReset) -> FoldResult:
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    old = read_head(kv, ck)
    purged_count = purged_bytes = 0
    if old is not None:
        purged_count, purged_bytes = _delete_generation(kv, ck, old)
    new = StreamHead(
        stream_id=ev.new_stream_id,
        generation=(old.generation + 1) if old is not None else 1,
        last_transition_at_ms=ctx.timestamp_ms,
    )
    kv.put(keys.STREAMS, ck, new.encode())
    return FoldResult(
        Outcome(
            kind=RESET,
            app_id=ev.app_id,
            channel=ev.channel,
            stream_id=new.stream_id,
            details={
                "previous_stream_id": old.stream_id if old is not None else None,
                "purged_messages": purged_count,
                "purged_bytes": purged_bytes,
            },
        )
    )


def _delete_generation(kv: KV, ck: bytes, head: StreamHead) -> tuple[int, int]:
    gen_prefix = keys.history_gen_prefix(ck, head.generation)
    rows = list(kv.scan(keys.HISTORY, gen_prefix, keys.prefix_end(gen_prefix)))
    for key, raw in rows:
        row = HistoryRow.decode(raw)
        serial = keys.read_u64(key, len(gen_prefix))
        kv.delete(keys.HISTORY, key)
        kv.delete(
            keys.HISTORY_TS,
            keys.history_ts_key(ck, head.generation, row.published_at_ms, serial),
        )
    return head.retained_count, head.retained_bytes


def _purge(kv: KV, ctx: RecordContext, ev: HistoryPurged) -> FoldResult:
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    head = read_head(kv, ck)
    before_count = head.retained_count if head else 0
    before_bytes = head.retained_bytes if head else 0
    if head is not None and head.retained_count:
        gen_prefix = keys.history_gen_prefix(ck, head.generation)
        for key, raw in list(kv.scan(keys.HISTORY, gen_prefix, keys.prefix_end(gen_prefix))):
            serial = keys.read_u64(key, len(gen_prefix))
            row = HistoryRow.decode(raw)
            if ev.mode == "before_serial" and not (
                ev.before_serial is not None and serial < ev.before_serial
            ):
                break
            if ev.mode == "before_time_ms" and not (
                ev.before_time_ms is not None and row.published_at_ms < ev.before_time_ms
            ):
                continue
            head = _evict(kv, ck, head, serial, row)
        head = _refresh_floor(kv, ck, head)
        kv.put(keys.STREAMS, ck, head.encode())
    return FoldResult(
        Outcome(
            kind=PURGED,
            app_id=ev.app_id,
            channel=ev.channel,
            stream_id=head.stream_id if head else None,
            details={
                "purged_messages": before_count - (head.retained_count if head else 0),
                "purged_bytes": before_bytes - (head.retained_bytes if head else 0),
            },
        )
    )


def _mark_state(kv: KV, ctx: RecordContext, ev: StreamStateMarked) -> FoldResult:
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    head = read_head(kv, ck)
    if head is not None:
        head = head.with_(
            durable_state=ev.durable_state,
            reason=None if ev.durable_state == HEALTHY else ev.reason,
            last_transition_at_ms=ctx.timestamp_ms,
        )
        kv.put(keys.STREAMS, ck, head.encode())
    return FoldResult(
        Outcome(
            kind=STATE_MARKED,
            app_id=ev.app_id,
            channel=ev.channel,
            stream_id=head.stream_id if head else None,
            details={"durable_state": ev.durable_state},
        )
    )


def _rebase(kv: KV, ctx: RecordContext, ev: PartitionRebased) -> FoldResult:
    """Every channel of this partition starts a new generation with a derivable stream id."""
    rebased = 0
    for ck, raw in list(kv.scan(keys.STREAMS, b"", b"\xff")):
        record_key = ck[:-1]
        if ctx.partitioner(record_key, ctx.partitions) != ctx.partition:
            continue
        app_id, channel = keys.split_channel_prefix(ck)
        old = StreamHead.decode(raw)
        _delete_generation(kv, ck, old)
        new = StreamHead(
            stream_id=first_stream_id(ev.event_id, app_id, channel),
            generation=old.generation + 1,
            last_transition_at_ms=ctx.timestamp_ms,
        )
        kv.put(keys.STREAMS, ck, new.encode())
        rebased += 1
    return FoldResult(Outcome(kind=REBASED, details={"channels": rebased}))


# --- dedupe and pruning --------------------------------------------------------------------


def _seen_event(kv: KV, ctx: RecordContext, event_id: str) -> Outcome | None:
    raw = kv.get(keys.DEDUP, _DEDUP_ENTRY + keys.dedup_key(ctx.partition, event_id))
    if raw is None:
        return None
    original_offset = keys.read_u64(raw, 8)
    original = kv.get(keys.OFFSETS, keys.offset_key(ctx.partition, original_offset))
    if original is None:
        return Outcome(kind=DUPLICATE, duplicate_of=original_offset)
    return decode_offset_outcome(original).as_original(original_offset)


def _remember_event(kv: KV, ctx: RecordContext, event_id: str) -> None:
    dk = keys.dedup_key(ctx.partition, event_id)
    kv.put(keys.DEDUP, _DEDUP_ENTRY + dk, keys.u64(ctx.timestamp_ms) + keys.u64(ctx.offset))
    kv.put(
        keys.DEDUP,
        _DEDUP_BY_TIME + keys.u32(ctx.partition) + keys.u64(ctx.timestamp_ms) + event_id.encode(),
        b"",
    )


def _idem_expiry_key(expires_ms: int, idem_key: bytes) -> bytes:
    return _IDEM_BY_EXPIRY + keys.u64(expires_ms) + idem_key


def _prune_expired(kv: KV, ctx: RecordContext) -> None:
    """Forget dedupe entries, outcomes and idempotency keys that left their window.

    Runs when the record time enters a new minute, so the state after each record depends only
    on the records before it — never on how the consumer happened to batch them.
    """
    prev = ctx.previous_timestamp_ms
    if prev is not None and prev // _PRUNE_BUCKET_MS == ctx.timestamp_ms // _PRUNE_BUCKET_MS:
        return
    bucket_start = (ctx.timestamp_ms // _PRUNE_BUCKET_MS) * _PRUNE_BUCKET_MS
    cutoff = bucket_start - DEDUP_WINDOW_MS
    p = keys.u32(ctx.partition)

    by_time = _DEDUP_BY_TIME + p
    for key, _ in list(kv.scan(keys.DEDUP, by_time, by_time + keys.u64(max(cutoff, 0)))):
        event_id = key[len(by_time) + 8 :].decode()
        kv.delete(keys.DEDUP, key)
        kv.delete(keys.DEDUP, _DEDUP_ENTRY + keys.dedup_key(ctx.partition, event_id))

    for key, raw in list(kv.scan(keys.OFFSETS, p, keys.prefix_end(p))):
        if keys.read_u64(raw) >= cutoff or keys.read_u64(key, 4) >= ctx.offset:
            break
        kv.delete(keys.OFFSETS, key)

    # Idempotency keys are app-scoped, not partition-scoped: each partition prunes only the
    # keys of channels it owns, so partitions never race over the same entry.
    expiry_end = _IDEM_BY_EXPIRY + keys.u64(max(bucket_start, 0))
    for key, _ in list(kv.scan(keys.IDEM, _IDEM_BY_EXPIRY, expiry_end)):
        idem_key = key[len(_IDEM_BY_EXPIRY) + 8 :]
        app, _ns_key, channel = idem_key.split(b"\x00", 2)
        if ctx.partitioner(app + b"\x00" + channel, ctx.partitions) != ctx.partition:
            continue
        kv.delete(keys.IDEM, key)
        kv.delete(keys.IDEM, idem_key)
