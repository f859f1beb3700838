"""The channel fold as a pure function over an in-memory store: serials, dedupe, resets."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest

from projections.folds.channel import ChannelState, RecordContext, first_stream_id, fold
from projections.folds.state import APPLIED, CONFLICT, DUPLICATE, EPHEMERAL, HistoryRow, StreamHead
from projections.store import keys
from projections.store.kv import MemoryKV, Overlay
from sockudo.events.channel import (
    ChannelEvent,
    Flags,
    HistoryPurged,
    HistoryReset,
    IdempotencyClaim,
    MessagePublished,
    Origin,
    PartitionRebased,
    Retention,
)
from sockudo.log.partitioning import partition_for

ORIGIN = Origin(node="n1")


def publish(channel: str = "chat", n: int = 0, **kw: object) -> MessagePublished:
    base: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "app_id": "app",
        "channel": channel,
        "origin": ORIGIN,
        "message_id": f"m{n}",
        "name": "ev",
        "data": f"payload-{n}",
    }
    base.update(kw)
    return MessagePublished(**base)  # type: ignore[arg-type]


def run(
    kv: MemoryKV,
    events: Sequence[ChannelEvent],
    *,
    start_offset: int = 0,
    start_ts: int = 1_000_000,
    step_ms: int = 10,
    batch: int = 1_000_000,
) -> list:
    """Fold ``events`` as the projector would: overlay per batch, committed into ``kv``."""
    results = []
    prev: int | None = None if start_offset == 0 else start_ts + (start_offset - 1) * step_ms
    for i in range(0, len(events), batch):
        overlay = Overlay(kv)
        state = ChannelState(overlay)
        for j, ev in enumerate(events[i : i + batch], start=i):
            offset = start_offset + j
            ts = start_ts + offset * step_ms
            ctx = RecordContext("t", 0, offset, ts, prev, 1, partition_for)
            results.append(fold(state, ctx, ev))
            prev = ts
        state.flush()
        for cf, pairs in overlay.changes().items():
            for k, v in pairs.items():
                if v is None:
                    kv.delete(cf, k)
                else:
                    kv.put(cf, k, v)
    return results


def read_head(kv: MemoryKV, ck: bytes) -> StreamHead | None:
    raw = kv.get(keys.STREAMS, ck)
    return StreamHead.decode(raw) if raw is not None else None


def snapshot(kv: MemoryKV) -> dict[str, list[tuple[bytes, bytes]]]:
    return {cf: list(kv.items(cf)) for cf in keys.COLUMN_FAMILIES}


def test_serials_are_contiguous_and_stream_id_comes_from_the_first_record() -> None:
    kv = MemoryKV()
    events = [publish(n=i) for i in range(5)]
    results = run(kv, events)
    assert [r.outcome.history_serial for r in results] == [1, 2, 3, 4, 5]
    assert [r.outcome.delivery_serial for r in results] == [1, 2, 3, 4, 5]
    expected_stream = first_stream_id(events[0].event_id, "app", "chat")
    assert {r.outcome.stream_id for r in results} == {expected_stream}
    head = read_head(kv, keys.channel_prefix("app", "chat"))
    assert head is not None
    assert (head.next_h, head.retained_count, head.oldest_serial, head.newest_serial) == (
        6,
        5,
        1,
        5,
    )
    raw = kv.get(keys.HISTORY, keys.history_key(keys.channel_prefix("app", "chat"), 1, 3))
    assert raw is not None
    row = HistoryRow.decode(raw)
    assert row.message["data"] == "payload-2"
    assert row.message["serial"] == 3
    assert row.offset == 2


def test_channels_have_independent_serials() -> None:
    kv = MemoryKV()
    results = run(kv, [publish("a", 0), publish("b", 1), publish("a", 2)])
    assert [(r.outcome.channel, r.outcome.history_serial) for r in results] == [
        ("a", 1),
        ("b", 1),
        ("a", 2),
    ]


def test_ephemeral_consumes_no_serial_and_history_off_gets_only_delivery_serial() -> None:
    kv = MemoryKV()
    results = run(
        kv,
        [
            publish(n=0, flags=Flags(ephemeral=True)),
            publish(n=1, flags=Flags(persist=False)),
            publish(n=2),
        ],
    )
    assert results[0].outcome.kind == EPHEMERAL
    assert results[0].outcome.delivery_serial is None
    assert results[0].deliveries[0].serial is None
    assert (results[1].outcome.delivery_serial, results[1].outcome.history_serial) == (1, None)
    assert (results[2].outcome.delivery_serial, results[2].outcome.history_serial) == (2, 1)


def test_repeated_event_id_is_a_duplicate_with_the_original_serial() -> None:
    kv = MemoryKV()
    ev = publish(n=0)
    results = run(kv, [ev, publish(n=1), ev])
    assert results[2].outcome.kind == DUPLICATE
    assert results[2].outcome.duplicate_of == 0
    assert results[2].outcome.history_serial == 1
    assert results[2].deliveries == ()
    head = read_head(kv, keys.channel_prefix("app", "chat"))
    assert head is not None
    assert head.next_h == 3


def test_idempotency_key_same_fingerprint_duplicates_other_fingerprint_conflicts() -> None:
    kv = MemoryKV()
    claim = IdempotencyClaim(ns="e", key="k1", fingerprint="f1", ttl_ms=120_000)
    other = IdempotencyClaim(ns="e", key="k1", fingerprint="f2", ttl_ms=120_000)
    results = run(
        kv,
        [
            publish(n=0, idempotency=claim),
            publish(n=1, idempotency=claim),
            publish(n=2, idempotency=other),
            publish(n=3),
        ],
    )
    assert results[0].outcome.kind == APPLIED
    assert results[1].outcome.kind == DUPLICATE
    assert results[1].outcome.message_id == "m0"
    assert results[1].outcome.history_serial == 1
    assert results[2].outcome.kind == CONFLICT
    assert results[3].outcome.history_serial == 2


def test_idempotency_key_expires_by_record_time() -> None:
    kv = MemoryKV()
    claim = IdempotencyClaim(ns="e", key="k", fingerprint="f", ttl_ms=1_000)
    # step 600 ms: the third record lands 1.2 s after the first, past the TTL.
    results = run(
        kv,
        [
            publish(n=0, idempotency=claim),
            publish(n=1, idempotency=claim),
            publish(n=2, idempotency=claim),
        ],
        step_ms=600,
    )
    assert [r.outcome.kind for r in results] == [APPLIED, DUPLICATE, APPLIED]
    assert results[2].outcome.history_serial == 2


def test_a_cache_channels_event_is_dropped_an_hour_after_its_publish() -> None:
    kv = MemoryKV()
    minute = 60_000
    # Record times one minute apart: "cache-a" published at minute 0, "cache-b" at 0 and again
    # at 30; then 62 more minutes of other traffic.
    events = [publish("cache-a", 0), publish("cache-b", 1)]
    events += [publish("other", n) for n in range(2, 30)]
    events += [publish("cache-b", 30)]
    events += [publish("other", n) for n in range(31, 94)]

    def cached(results_upto: int) -> set[str]:
        state = MemoryKV()
        run(state, events[:results_upto], step_ms=minute)
        return {
            channel
            for channel in ("cache-a", "cache-b")
            if state.get(keys.CACHE, keys.channel_prefix("app", channel)) is not None
        }

    assert cached(61) == {"cache-a", "cache-b"}  # minute 60: not expired yet
    assert cached(62) == {"cache-b"}  # minute 61: cache-a's hour is over, cache-b republished
    run(kv, events, step_ms=minute)  # minute 93: both are gone, and so is their index
    assert list(kv.items(keys.CACHE)) == []


def test_reset_opens_a_new_generation_and_restarts_serials() -> None:
    kv = MemoryKV()
    new_id = str(uuid.uuid4())
    reset = HistoryReset(
        event_id=str(uuid.uuid4()),
        app_id="app",
        channel="chat",
        origin=ORIGIN,
        new_stream_id=new_id,
        reason="ops",
    )
    results = run(kv, [publish(n=0), publish(n=1), reset, publish(n=2)])
    assert results[2].outcome.details["purged_messages"] == 2
    assert results[2].outcome.details["previous_stream_id"] == results[0].outcome.stream_id
    assert (results[3].outcome.stream_id, results[3].outcome.history_serial) == (new_id, 1)
    ck = keys.channel_prefix("app", "chat")
    assert [k for k, _ in kv.scan(keys.HISTORY, ck, keys.prefix_end(ck))] == [
        keys.history_key(ck, 2, 1)
    ]


def test_purge_before_serial_moves_the_floor_not_the_generation() -> None:
    kv = MemoryKV()
    purge = HistoryPurged(
        event_id=str(uuid.uuid4()),
        app_id="app",
        channel="chat",
        origin=ORIGIN,
        mode="before_serial",
        before_serial=3,
        reason="trim",
    )
    results = run(kv, [publish(n=i) for i in range(4)] + [purge, publish(n=9)])
    assert results[4].outcome.details["purged_messages"] == 2
    head = read_head(kv, keys.channel_prefix("app", "chat"))
    assert head is not None
    assert (head.oldest_serial, head.newest_serial, head.next_h) == (3, 5, 6)
    assert head.evicted_through_serial == 2
    assert head.stream_id == results[0].outcome.stream_id


def test_count_retention_evicts_oldest_rows() -> None:
    kv = MemoryKV()
    events = [publish(n=i, retention=Retention(max_count=2)) for i in range(5)]
    run(kv, events)
    head = read_head(kv, keys.channel_prefix("app", "chat"))
    assert head is not None
    assert (head.retained_count, head.oldest_serial, head.evicted_through_serial) == (2, 4, 3)


def test_rebase_gives_every_channel_of_the_partition_a_derivable_generation() -> None:
    kv = MemoryKV()
    rebase = PartitionRebased(event_id=str(uuid.uuid4()), origin=ORIGIN)
    results = run(kv, [publish("a", 0), publish("b", 1), rebase, publish("a", 2)])
    assert results[2].outcome.details["channels"] == 2
    assert results[3].outcome.stream_id == first_stream_id(rebase.event_id, "app", "a")
    assert results[3].outcome.history_serial == 1


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_batching_does_not_change_the_state(batch: int) -> None:
    claim = IdempotencyClaim(ns="e", key="k", fingerprint="f", ttl_ms=5_000)
    events: list[ChannelEvent] = []
    for i in range(120):
        events.append(publish("ab"[i % 2], i, idempotency=claim if i % 10 == 0 else None))
    # 7 s steps cross the dedupe and idempotency windows, exercising pruning mid-stream.
    one_pass = MemoryKV()
    run(one_pass, events, step_ms=7_000)
    batched = MemoryKV()
    run(batched, events, step_ms=7_000, batch=batch)
    assert snapshot(batched) == snapshot(one_pass)


def test_resuming_from_a_prefix_equals_one_pass() -> None:
    events = [publish("abc"[i % 3], i) for i in range(60)]
    one_pass = MemoryKV()
    run(one_pass, events, step_ms=20_000)
    resumed = MemoryKV()
    run(resumed, events[:25], step_ms=20_000)
    run(resumed, events[25:], start_offset=25, step_ms=20_000)
    assert snapshot(resumed) == snapshot(one_pass)


@pytest.mark.parametrize(
    "head",
    [
        StreamHead(stream_id="s-1", generation=1),
        StreamHead(
            stream_id="0c6f2a52-8a1e-4c61-9f3e-5b1d2f7a9e10",
            generation=7,
            next_h=12,
            next_d=40,
            durable_state="degraded",
            reason="operator: ünïcode",
            last_transition_at_ms=1_700_000_000_000,
            evicted_through_serial=3,
            evicted_through_time_ms=1_699_999_999_000,
            retained_count=8,
            retained_bytes=1234,
            oldest_serial=4,
            oldest_ts=1_700_000_000_001,
            newest_serial=11,
            newest_ts=1_700_000_000_999,
        ),
    ],
)
def test_stream_head_round_trips(head: StreamHead) -> None:
    assert StreamHead.decode(head.encode()) == head
