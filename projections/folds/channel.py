"""The channel fold: serials, history rows, generations, purge floors and idempotency.

``fold(state, ctx, event)`` applies one decoded ``channel-events`` record to the projection
state and says what it meant. It is deterministic: everything it needs comes from the record
(its event, offset and log-append time), never from the clock, configuration or randomness,
so every node and every rebuild derive the same serials (spec 05 §6.1, §6.4).
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from projections.folds.state import (
    APPLIED,
    BINARY_MEMBER,
    CACHE_TTL_MS,
    CONFLICT,
    DUPLICATE,
    EPHEMERAL,
    GENESIS,
    HEALTHY,
    MESSAGE,
    PURGED,
    REBASED,
    RESET,
    STATE_MARKED,
    CachedEvent,
    Delivery,
    HistoryRow,
    Outcome,
    StreamHead,
    dumps,
    history_item_prefix,
    json_int,
    json_str,
    new_delivery,
    new_outcome,
    presence_stream_id,
)
from projections.store import keys
from projections.store.kv import KV
from sockudo.channels import classify_channel
from sockudo.events.channel import (
    ChannelEvent,
    HistoryPurged,
    HistoryReset,
    MessagePublished,
    PartitionGenesis,
    PartitionRebased,
    Retention,
    StreamStateMarked,
)
from sockudo.fastclass import fast_constructor

DEDUP_WINDOW_MS = 600_000
"""Event-id dedupe and per-offset outcomes are kept this long in record time (spec 05 §6.6)."""
_PRUNE_BUCKET_MS = 60_000
_BY_EXPIRY = b"\xff"
"""Expiry index of the ``idem`` and ``cache`` column families: UTF-8 app ids never contain
0xFF, so this region is disjoint from their keys."""
_OFFSET_VALUE = struct.Struct(">QH")  # record time, length of the event id that follows

_E = TypeVar("_E", bound=Any)
_esc = json_str

CHANNEL_EVENT_TYPES = (
    MessagePublished,
    HistoryReset,
    HistoryPurged,
    StreamStateMarked,
    PartitionRebased,
    PartitionGenesis,
)
"""The events this fold interprets; other families on the topic belong to other folds."""


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
    deliver: bool = True
    """Build live deliveries (a rebuild has no sockets to deliver to)."""


new_context: Callable[..., RecordContext] = fast_constructor(RecordContext)
"""``RecordContext`` from all eight fields, positionally (the projector builds one per record)."""


@dataclass(frozen=True, slots=True)
class FoldResult:
    outcome: Outcome
    deliveries: tuple[Delivery, ...] = ()


_result: Callable[[Outcome, tuple[Delivery, ...]], FoldResult] = fast_constructor(FoldResult)


class ChannelState:
    """The fold's view of the store: heads cached and updated in place, written on ``flush``.

    One instance lives for one batch; ``flush`` must run before the batch is committed.
    """

    def __init__(self, kv: KV, cache: dict[bytes, StreamHead | None] | None = None) -> None:
        self.kv = kv
        # ``cache`` may outlive the batch (the projector's committed heads); it must then be
        # dropped if the batch fails to commit, since heads are updated in place.
        self._heads: dict[bytes, StreamHead | None] = {} if cache is None else cache
        self._dirty: set[bytes] = set()

    def head(self, ck: bytes) -> StreamHead | None:
        if ck in self._heads:
            return self._heads[ck]
        raw = self.kv.get(keys.STREAMS, ck)
        head = StreamHead.decode(raw) if raw is not None else None
        self._heads[ck] = head
        return head

    def set_head(self, ck: bytes, head: StreamHead) -> None:
        self._heads[ck] = head
        self._dirty.add(ck)

    def flush(self) -> None:
        for ck in self._dirty:
            head = self._heads[ck]
            if head is not None:
                self.kv.put(keys.STREAMS, ck, head.encode())
        self._dirty.clear()


def first_stream_id(event_id: str, app_id: str, channel: str) -> str:
    """``stream_id`` of a generation opened without an appender-made id (UUIDv5, spec 05 §6.3)."""
    return str(uuid.uuid5(uuid.UUID(event_id), f"{app_id}\x00{channel}"))


def fold(state: ChannelState, ctx: RecordContext, event: ChannelEvent) -> FoldResult:
    """Apply one record; keep its outcome under its offset; return what to deliver."""
    if type(event) is MessagePublished:  # nearly every record: skip the dispatch
        return fold_record(state, ctx, event, _publish)
    return fold_record(state, ctx, event, _apply)


def fold_record(
    state: ChannelState,
    ctx: RecordContext,
    event: _E,
    apply: Callable[[ChannelState, RecordContext, _E], FoldResult],
) -> FoldResult:
    """The frame every fold of the topic shares: prune by record time, apply, keep the outcome.

    ``apply`` is the family's own fold; the outcome lands under the record's offset so waiters
    and ``inspect-stream`` can map offsets to what they meant.
    """
    prev = ctx.previous_timestamp_ms
    if prev is None or prev // _PRUNE_BUCKET_MS != ctx.timestamp_ms // _PRUNE_BUCKET_MS:
        _prune_expired(state.kv, ctx)
    result = apply(state, ctx, event)
    event_id = event.event_id.encode()
    state.kv.put(
        keys.OFFSETS,
        keys.offset_key(ctx.partition, ctx.offset),
        _OFFSET_VALUE.pack(ctx.timestamp_ms, len(event_id)) + event_id + result.outcome.encode(),
    )
    return result


def decode_offset_outcome(raw: bytes) -> Outcome:
    _ts, n = _OFFSET_VALUE.unpack_from(raw)
    return Outcome.decode(raw[_OFFSET_VALUE.size + n :])


def _apply(state: ChannelState, ctx: RecordContext, event: ChannelEvent) -> FoldResult:
    if isinstance(event, MessagePublished):
        return _publish(state, ctx, event)
    if isinstance(event, HistoryReset):
        return _reset(state, ctx, event)
    if isinstance(event, HistoryPurged):
        return _purge(state, ctx, event)
    if isinstance(event, StreamStateMarked):
        return _mark_state(state, ctx, event)
    if isinstance(event, PartitionRebased):
        return _rebase(state, ctx, event)
    if isinstance(event, PartitionGenesis):
        return FoldResult(Outcome(kind=GENESIS, details={"event_id": event.event_id}))
    raise TypeError(f"not a channel event: {type(event).__name__}")


# --- publish -------------------------------------------------------------------------------


def _publish(state: ChannelState, ctx: RecordContext, ev: MessagePublished) -> FoldResult:
    kv = state.kv
    dedup_key = keys.dedup_key(ctx.partition, ev.event_id)
    seen = _seen(kv, ctx.partition, dedup_key)
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
                    return FoldResult(Outcome(kind=CONFLICT, app_id=ev.app_id, channel=ev.channel))
                original = Outcome.decode(entry["o"].encode())
                return FoldResult(original.as_original(entry["at"]))
            kv.delete(keys.IDEM, _idem_expiry_key(entry["x"], idem_key))

    ts = ctx.timestamp_ms
    app_id, channel, flags = ev.app_id, ev.channel, ev.flags
    if flags.ephemeral:
        outcome = new_outcome(
            EPHEMERAL, app_id, channel, ev.message_id, None, None, None, ts, None, {}
        )
        deliveries = (_delivery(ev, None, None, None, ts),) if ctx.deliver else ()
    else:
        ck = keys.channel_prefix(app_id, channel)
        head = state.head(ck)
        if head is None:
            head = StreamHead(stream_id=first_stream_id(ev.event_id, app_id, channel), generation=1)
        d = head.next_d
        head.next_d = d + 1
        h: int | None = None
        if flags.persist:
            h = head.next_h
            msg = _message_json(ev, head.stream_id, h)
            item = (
                b""  # the response encoding refuses NaN/Infinity: such pages take the slow path
                if b"NaN" in msg or b"Infinity" in msg
                else history_item_prefix(head.stream_id, h, ts, ev.message_id, ev.name, len(msg))
            )
            row = HistoryRow(msg, ts, ctx.offset, d, item)
            append_row(kv, keys.HISTORY, ck, head, h, row)
            # Recovery replays by delivery serial (spec 02 §7.3): D → H of the stored row.
            kv.put(keys.DELIVERY, keys.history_key(ck, head.generation, d), keys.u64(h))
            apply_retention(kv, keys.HISTORY, ck, head, ev.retention, ts)
        state.set_head(ck, head)
        outcome = new_outcome(
            APPLIED, app_id, channel, ev.message_id, head.stream_id, d, h, ts, None, {}
        )
        deliveries = (_delivery(ev, head.stream_id, d, h, ts),) if ctx.deliver else ()

    kv.put(keys.DEDUP, dedup_key, keys.u64(ctx.offset))
    if not ev.client_event and _is_cache_channel(channel):
        # Cache channels keep their last HTTP publish for new subscribers (spec 01 §3.9);
        # client events are not cached (upstream behaviour).
        cached = CachedEvent(ev.name, ev.data, ts)
        ck = keys.channel_prefix(ev.app_id, ev.channel)
        kv.put(keys.CACHE, ck, cached.encode())
        kv.put(keys.CACHE, _cache_expiry_key(ts + CACHE_TTL_MS, ck), b"")
    if idem is not None:
        expires = ts + idem.ttl_ms
        entry = {"f": idem.fingerprint, "x": expires, "at": ctx.offset}
        entry["o"] = outcome.encode().decode()
        kv.put(keys.IDEM, idem_key, dumps(entry))
        kv.put(keys.IDEM, _idem_expiry_key(expires, idem_key), b"")
    return _result(outcome, deliveries)


_CACHE_CHANNELS: dict[str, bool] = {}


def _is_cache_channel(channel: str) -> bool:
    """``classify_channel(channel).cache``, remembered per name (a pure function of it)."""
    cache = _CACHE_CHANNELS.get(channel)
    if cache is None:
        if len(_CACHE_CHANNELS) >= 100_000:
            _CACHE_CHANNELS.clear()
        cache = _CACHE_CHANNELS[channel] = classify_channel(channel).cache
    return cache


def _message_json(ev: MessagePublished, stream_id: str, serial: int) -> bytes:
    """The stored V2 wire message of a history row (spec 03 §3.1 ``message``).

    Exactly ``dumps`` of ``{"event", "channel", "data", "message_id", "stream_id", "serial"
    [, "user_id"][, "tags"][, "extras"][, "data_encoding": "binary"]}``, written piece by
    piece (the compact encoder writes a nested value as it writes it alone); ``data`` and
    ``extras`` go through ``json.loads`` first, so stored JSON is normalised as before.
    ``data_encoding`` marks raw bytes (``data`` is then their int array).
    """
    data = dumps(json.loads(ev.data)).decode() if ev.data_is_json else _esc(ev.data)
    out = [
        '{"event":',
        _esc(ev.name),
        ',"channel":',
        _esc(ev.channel),
        ',"data":',
        data,
        ',"message_id":',
        _esc(ev.message_id),
        ',"stream_id":',
        _esc(stream_id),
        ',"serial":',
        json_int(serial),
    ]
    if ev.client_event and ev.origin.user_id is not None:
        out += (',"user_id":', _esc(ev.origin.user_id))
    if ev.tags:
        out += (',"tags":', dumps(dict(ev.tags)).decode())
    if ev.extras_json is not None:
        out += (',"extras":', dumps(json.loads(ev.extras_json)).decode())
    if ev.data_is_binary:
        out.append(BINARY_MEMBER)
    out.append("}")
    return "".join(out).encode()


def _delivery(
    ev: MessagePublished, stream_id: str | None, d: int | None, h: int | None, ts: int
) -> Delivery:
    origin = ev.origin
    return new_delivery(
        ev.app_id,
        ev.channel,
        ev.name,
        ev.data,
        ev.data_is_json,
        ev.message_id,
        stream_id,
        d,
        h,
        ts,
        origin.socket_id,
        origin.user_id,
        ev.client_event,
        ev.extras_json,
        ev.tags,
        MESSAGE,
        ev.data_is_binary,
    )


def append_row(kv: KV, cf: str, ck: bytes, head: StreamHead, serial: int, row: HistoryRow) -> None:
    """Store ``row`` as the newest of the head's generation in ``cf``; the head counts it."""
    kv.put(cf, keys.history_key(ck, head.generation, serial), row.encode())
    head.next_h = serial + 1
    head.retained_count += 1
    head.retained_bytes += row.size
    if head.oldest_serial is None:
        head.oldest_serial, head.oldest_ts = serial, row.published_at_ms
    head.newest_serial, head.newest_ts = serial, row.published_at_ms


def apply_retention(
    kv: KV, cf: str, ck: bytes, head: StreamHead, r: Retention, now_ms: int
) -> None:
    """Drop the oldest rows of ``cf`` while they break retention ``r`` (spec 03 §2.3).

    Shared by message history (``history``) and presence history (``presence_hist``).
    """
    if r.window_s is None and r.max_count is None and r.max_bytes is None:
        return  # unlimited: nothing can break the policy
    cutoff = now_ms - r.window_s * 1000 if r.window_s is not None else None

    def breaks_policy(oldest_ts: int | None) -> bool:
        if head.retained_count == 0:
            return False
        if cutoff is not None and oldest_ts is not None and oldest_ts < cutoff:
            return True
        if r.max_count is not None and head.retained_count > r.max_count:
            return True
        return r.max_bytes is not None and head.retained_bytes > r.max_bytes

    if not breaks_policy(head.oldest_ts):
        return
    gen_prefix = keys.history_gen_prefix(ck, head.generation)
    for key, raw in list(kv.scan(cf, gen_prefix, keys.prefix_end(gen_prefix))):
        row = HistoryRow.decode(raw)
        if not breaks_policy(row.published_at_ms):
            break
        _evict(kv, cf, head, key, keys.read_u64(key, len(gen_prefix)), row)
    _refresh_floor(kv, cf, ck, head)


def _evict(kv: KV, cf: str, head: StreamHead, key: bytes, serial: int, row: HistoryRow) -> None:
    kv.delete(cf, key)
    if row.delivery_serial:
        gen_prefix = key[:-8]  # CK ‖ generation; the history serial is the last 8 bytes
        kv.delete(keys.DELIVERY, gen_prefix + keys.u64(row.delivery_serial))
    head.retained_count -= 1
    head.retained_bytes -= row.size
    head.evicted_through_serial = max(head.evicted_through_serial or 0, serial)
    head.evicted_through_time_ms = max(head.evicted_through_time_ms or 0, row.published_at_ms)


def _refresh_floor(kv: KV, cf: str, ck: bytes, head: StreamHead) -> None:
    """Recompute the oldest retained row after evictions."""
    gen_prefix = keys.history_gen_prefix(ck, head.generation)
    for key, raw in kv.scan(cf, gen_prefix, keys.prefix_end(gen_prefix)):
        head.oldest_serial = keys.read_u64(key, len(gen_prefix))
        head.oldest_ts = HistoryRow.decode(raw).published_at_ms
        return
    head.oldest_serial = head.oldest_ts = head.newest_serial = head.newest_ts = None


# --- stream control ------------------------------------------------------------------------


def _reset(state: ChannelState, ctx: RecordContext, ev: HistoryReset) -> FoldResult:
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    old = state.head(ck)
    purged_count = purged_bytes = 0
    if old is not None:
        purged_count, purged_bytes = old.retained_count, old.retained_bytes
        delete_generation(state.kv, ck, old.generation)
    new = StreamHead(
        stream_id=ev.new_stream_id,
        generation=(old.generation + 1) if old is not None else 1,
        last_transition_at_ms=ctx.timestamp_ms,
    )
    state.set_head(ck, new)
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


def delete_generation(
    kv: KV, ck: bytes, generation: int, cfs: tuple[str, ...] = (keys.HISTORY, keys.DELIVERY)
) -> None:
    """Drop every row of one stream generation from ``cfs``."""
    gen_prefix = keys.history_gen_prefix(ck, generation)
    for cf in cfs:
        for key, _ in list(kv.scan(cf, gen_prefix, keys.prefix_end(gen_prefix))):
            kv.delete(cf, key)


def _purge(state: ChannelState, ctx: RecordContext, ev: HistoryPurged) -> FoldResult:
    kv = state.kv
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    head = state.head(ck)
    purged_count = purged_bytes = 0
    if head is not None and head.retained_count:
        before_count, before_bytes = head.retained_count, head.retained_bytes
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
                break  # record times never decrease within a generation
            _evict(kv, keys.HISTORY, head, key, serial, row)
        _refresh_floor(kv, keys.HISTORY, ck, head)
        state.set_head(ck, head)
        purged_count = before_count - head.retained_count
        purged_bytes = before_bytes - head.retained_bytes
    return FoldResult(
        Outcome(
            kind=PURGED,
            app_id=ev.app_id,
            channel=ev.channel,
            stream_id=head.stream_id if head else None,
            details={"purged_messages": purged_count, "purged_bytes": purged_bytes},
        )
    )


def _mark_state(state: ChannelState, ctx: RecordContext, ev: StreamStateMarked) -> FoldResult:
    ck = keys.channel_prefix(ev.app_id, ev.channel)
    head = state.head(ck)
    if head is not None:
        head.durable_state = ev.durable_state
        head.reason = None if ev.durable_state == HEALTHY else ev.reason
        head.last_transition_at_ms = ctx.timestamp_ms
        state.set_head(ck, head)
    return FoldResult(
        Outcome(
            kind=STATE_MARKED,
            app_id=ev.app_id,
            channel=ev.channel,
            stream_id=head.stream_id if head else None,
            details={"durable_state": ev.durable_state},
        )
    )


def _rebase(state: ChannelState, ctx: RecordContext, ev: PartitionRebased) -> FoldResult:
    """Every channel of this partition starts a new generation with a derivable stream id:
    its message stream and its presence-history stream (their continuity is equally unproven);
    live presence membership stays."""
    state.flush()
    kv = state.kv
    rebased = 0
    for ck, _raw, app_id, channel in _heads_of_partition(kv, keys.STREAMS, ctx):
        old = state.head(ck)
        assert old is not None
        delete_generation(kv, ck, old.generation)
        state.set_head(
            ck,
            StreamHead(
                stream_id=first_stream_id(ev.event_id, app_id, channel),
                generation=old.generation + 1,
                last_transition_at_ms=ctx.timestamp_ms,
            ),
        )
        rebased += 1
    presence = 0
    for ck, raw, app_id, channel in _heads_of_partition(kv, keys.PSTREAMS, ctx):
        old = StreamHead.decode(raw)
        delete_generation(kv, ck, old.generation, (keys.PRESENCE_HIST,))
        head = StreamHead(
            stream_id=presence_stream_id(ev.event_id, app_id, channel),
            generation=old.generation + 1,
            last_transition_at_ms=ctx.timestamp_ms,
        )
        kv.put(keys.PSTREAMS, ck, head.encode())
        presence += 1
    return FoldResult(
        Outcome(kind=REBASED, details={"channels": rebased, "presence_channels": presence})
    )


def _heads_of_partition(kv: KV, cf: str, ctx: RecordContext) -> list[tuple[bytes, bytes, str, str]]:
    """``(channel prefix, head, app_id, channel)`` of every stream head in ``cf`` whose channel
    is in the record's partition (a snapshot: the caller rewrites them)."""
    out = []
    for ck, raw in kv.scan(cf, b"", b"\xff"):
        if ctx.partitioner(ck[:-1], ctx.partitions) == ctx.partition:
            out.append((ck, raw, *keys.split_channel_prefix(ck)))
    return out


# --- dedupe and pruning --------------------------------------------------------------------


def seen_event(kv: KV, ctx: RecordContext, event_id: str) -> Outcome | None:
    """The original outcome when ``event_id`` was already folded in this partition."""
    return _seen(kv, ctx.partition, keys.dedup_key(ctx.partition, event_id))


def _seen(kv: KV, partition: int, dedup_key: bytes) -> Outcome | None:
    raw = kv.get(keys.DEDUP, dedup_key)
    if raw is None:
        return None
    original_offset = keys.read_u64(raw)
    original = kv.get(keys.OFFSETS, keys.offset_key(partition, original_offset))
    if original is None:
        return Outcome(kind=DUPLICATE, duplicate_of=original_offset)
    return decode_offset_outcome(original).as_original(original_offset)


def _idem_expiry_key(expires_ms: int, idem_key: bytes) -> bytes:
    return _BY_EXPIRY + keys.u64(expires_ms) + idem_key


def _cache_expiry_key(expires_ms: int, ck: bytes) -> bytes:
    return _BY_EXPIRY + keys.u64(expires_ms) + ck


def _prune_expired(kv: KV, ctx: RecordContext) -> None:
    """Forget outcomes, dedupe entries, idempotency keys and cached events that left their
    window.

    Runs when the record time enters a new minute, so the state after each record depends only
    on the records before it — never on how the consumer happened to batch them.
    """
    prev = ctx.previous_timestamp_ms
    if prev is not None and prev // _PRUNE_BUCKET_MS == ctx.timestamp_ms // _PRUNE_BUCKET_MS:
        return
    bucket_start = (ctx.timestamp_ms // _PRUNE_BUCKET_MS) * _PRUNE_BUCKET_MS
    cutoff = bucket_start - DEDUP_WINDOW_MS
    p = keys.u32(ctx.partition)

    for key, raw in list(kv.scan(keys.OFFSETS, p, keys.prefix_end(p))):
        ts, n = _OFFSET_VALUE.unpack_from(raw)
        if ts >= cutoff or keys.read_u64(key, 4) >= ctx.offset:
            break
        kv.delete(keys.OFFSETS, key)
        event_id = raw[_OFFSET_VALUE.size : _OFFSET_VALUE.size + n].decode()
        kv.delete(keys.DEDUP, keys.dedup_key(ctx.partition, event_id))

    # Idempotency keys are app-scoped, not partition-scoped: each partition prunes only the
    # keys of channels it owns, so partitions never race over the same entry.
    expiry_end = _BY_EXPIRY + keys.u64(max(bucket_start, 0))
    for key, _ in list(kv.scan(keys.IDEM, _BY_EXPIRY, expiry_end)):
        idem_key = key[len(_BY_EXPIRY) + 8 :]
        app, _ns_key, channel = idem_key.split(b"\x00", 2)
        if ctx.partitioner(app + b"\x00" + channel, ctx.partitions) != ctx.partition:
            continue
        kv.delete(keys.IDEM, key)
        kv.delete(keys.IDEM, idem_key)

    # A cache channel's last event is served for an hour (spec 01 §3.9); past that it is
    # dropped, or every cache channel ever published would keep a key. A later publish of the
    # channel replaced the event (and has an expiry entry of its own): it stays.
    for key, _ in list(kv.scan(keys.CACHE, _BY_EXPIRY, expiry_end)):
        ck = key[len(_BY_EXPIRY) + 8 :]
        if ctx.partitioner(ck[:-1], ctx.partitions) != ctx.partition:
            continue
        kv.delete(keys.CACHE, key)
        cached = kv.get(keys.CACHE, ck)
        expired_at = bucket_start - CACHE_TTL_MS
        if cached is not None and CachedEvent.decode(cached).published_at_ms <= expired_at:
            kv.delete(keys.CACHE, ck)
