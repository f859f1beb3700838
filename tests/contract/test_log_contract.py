"""The log contract (spec 05 §8.2 semantics 1-8, checks 17-21 and 23): one suite, every backend.

Every test takes ``event_log`` and so runs against the memory twin, the embedded RocksDB log
and a real Kafka broker (``-m kafka``; skipped with a reason when there is none).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sockudo.errors import (
    LogUnavailable,
    OffsetOutOfRange,
    RecordTooLarge,
    TopicMismatch,
    UnknownTopic,
)
from sockudo.log.base import MAX_RECORD_BYTES, AppendResult, LogReader, LogRecord
from sockudo.log.partitioning import channel_key, murmur2, partition_for
from tests.support.log_fixtures import LogUnderTest, read_all

DELETE = {"cleanup.policy": "delete"}
COMPACT = {"cleanup.policy": "compact"}
T = 10_000  # append timeout (ms): generous, a slow CI disk must not fail the suite


async def poll_until_error(reader: LogReader) -> None:
    """Poll for up to 4 s; an error must come (Kafka may need a fetch round trip to see it)."""
    for _ in range(20):
        await reader.poll(10, 200)


def shape(records: list[LogRecord]) -> list[tuple[object, ...]]:
    return [(r.partition, r.offset, r.key, r.value, r.headers) for r in records]


# -- 1, 4: offsets, order, byte-exact round trips (check 17) ----------------------------------


async def test_offsets_start_at_zero_and_records_round_trip(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    sent = [
        (b"k0", b"v0", (("sk.type", b"channel.publish"),)),
        (None, b"no-key", (("h", b"1"),)),
        (b"k2", None, (("a", b""), ("b", b"\x00\xff"))),
    ]
    results = [await log.append(topic, 0, k, v, h, timeout_ms=T) for k, v, h in sent]
    assert [(r.partition, r.offset) for r in results] == [(0, 0), (0, 1), (0, 2)]
    assert await log.bounds(topic, 0) == (0, 3)

    got = await read_all(log, topic, {0: 1}, 2)
    assert shape(got) == [(0, 1, *sent[1]), (0, 2, *sent[2])]
    assert all(r.topic == topic for r in got)
    assert [r.timestamp_ms for r in got] == [results[1].timestamp_ms, results[2].timestamp_ms]


async def test_keys_values_and_headers_round_trip_byte_exactly(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    every_byte = bytes(range(256))
    sent: list[tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]] = [
        (b"", b"", ()),  # empty is not None
        (None, None, ()),
        (every_byte, every_byte * 3, (("bin", every_byte),)),
        (b"k", b"v" * 200_000, ()),
        (b"k", b"dup", (("x", b"1"), ("x", b"2"), ("ü-名", b"\xc3\xbc"), ("empty", b""))),
    ]
    for k, v, h in sent:
        await log.append(topic, 0, k, v, h, timeout_ms=T)
    got = await read_all(log, topic, {0: 0}, len(sent))
    assert shape(got) == [(0, i, k, v, h) for i, (k, v, h) in enumerate(sent)]


async def test_reads_start_at_the_position_and_respect_max_records(
    event_log: LogUnderTest,
) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    for i in range(10):
        await log.append(topic, 0, b"k", b"%d" % i, timeout_ms=T)
    reader = log.reader(topic, {0: 4})
    try:
        seen: list[int] = []
        while len(seen) < 3:
            seen += [r.offset for r in await reader.poll(3 - len(seen), 1000)]
        assert seen == [4, 5, 6]
        assert reader.position(0) == 7
        rest: list[int] = []
        while len(rest) < 3:
            rest += [r.offset for r in await reader.poll(100, 1000)]
        assert rest == [7, 8, 9]
        assert reader.position(0) == 10
        await reader.seek(0, 8)
        again: list[LogRecord] = []
        while len(again) < 2:
            again += await reader.poll(100, 1000)
        assert [(r.offset, r.value) for r in again] == [(8, b"8"), (9, b"9")]
    finally:
        await reader.close()


async def test_one_reader_over_several_partitions(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 3, DELETE)
    for i in range(12):
        await log.append(topic, i % 3, b"k", b"%d" % i, timeout_ms=T)
    reader = log.reader(topic, {0: 0, 2: 1})
    try:
        got: list[LogRecord] = []
        deadline = time.monotonic() + 15
        while len(got) < 7 and time.monotonic() < deadline:
            got += await reader.poll(500, 200)
        assert sorted((r.partition, r.offset, r.value) for r in got) == [
            (0, o, b"%d" % (3 * o)) for o in range(4)
        ] + [(2, o, b"%d" % (3 * o + 2)) for o in range(1, 4)]
        for p in (0, 2):
            mine = [r.offset for r in got if r.partition == p]
            assert mine == sorted(mine), "offset order within a partition"
        await reader.seek(1, 3)  # assigns a new partition
        late: list[LogRecord] = []
        while not late and time.monotonic() < deadline:
            late = await reader.poll(500, 200)
        assert [(r.partition, r.offset, r.value) for r in late] == [(1, 3, b"10")]
        assert (reader.position(0), reader.position(1), reader.position(2)) == (4, 4, 4)
    finally:
        await reader.close()


# -- 2: acknowledged appends are readable, call order is kept ---------------------------------


async def test_sequential_appends_keep_call_order_and_are_readable_at_once(
    event_log: LogUnderTest,
) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    for i in range(20):
        result = await log.append(topic, 0, b"k", b"%d" % i, timeout_ms=T)
        assert result.offset == i
        assert await log.bounds(topic, 0) == (0, i + 1)
    # A reader created after the acknowledgement sees the record within max_wait.
    reader = log.reader(topic, {0: 19})
    try:
        got = await reader.poll(10, event_log.wait_budget_ms)
        if not got and event_log.backend == "kafka":
            got = await reader.poll(10, event_log.wait_budget_ms)  # connection set-up
        assert [(r.offset, r.value) for r in got] == [(19, b"19")]
    finally:
        await reader.close()


async def test_two_hundred_concurrent_appends_from_many_tasks(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 3, DELETE)
    keys = [channel_key("app1", f"room-{w}") for w in range(20)]

    async def producer(key: bytes) -> list[AppendResult]:
        p = partition_for(key, 3)
        return [await log.append(topic, p, key, b"%d" % i, timeout_ms=T) for i in range(10)]

    per_task = await asyncio.gather(*(producer(k) for k in keys))
    per_partition: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for results in per_task:
        offsets = [r.offset for r in results]
        assert offsets == sorted(offsets), "one task's appends keep call order"
        for r in results:
            per_partition[r.partition].append(r.offset)
    for p, offsets in per_partition.items():
        assert sorted(offsets) == list(range(len(offsets))), f"partition {p}: contiguous"
        assert await log.bounds(topic, p) == (0, len(offsets))

    records = await read_all(log, topic, {0: 0, 1: 0, 2: 0}, 200)
    assert len(records) == 200
    stored = {(r.partition, r.offset): (r.key, r.value) for r in records}
    for key, results in zip(keys, per_task, strict=True):
        assert [stored[(r.partition, r.offset)] for r in results] == [
            (key, b"%d" % i) for i in range(10)
        ], "every acknowledgement names the record it wrote"


async def test_concurrent_single_appends_get_distinct_contiguous_offsets(
    event_log: LogUnderTest,
) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    results = await asyncio.gather(
        *(log.append(topic, 0, None, b"%d" % i, timeout_ms=T) for i in range(200))
    )
    assert sorted(r.offset for r in results) == list(range(200))
    records = await read_all(log, topic, {0: 0}, 200)
    assert {r.offset: r.value for r in records} == {
        r.offset: b"%d" % i for i, r in enumerate(results)
    }


# -- 7: size limit (check 18) -----------------------------------------------------------------


async def test_oversized_record_is_refused_and_writes_nothing(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    await log.append(topic, 0, b"k", b"small", timeout_ms=T)
    with pytest.raises(RecordTooLarge):
        await log.append(topic, 0, b"k", b"x" * (MAX_RECORD_BYTES + 1), timeout_ms=T)
    assert await log.bounds(topic, 0) == (0, 1)
    assert (await log.append(topic, 0, b"k", b"after", timeout_ms=T)).offset == 1
    got = await read_all(log, topic, {0: 0}, 2)
    assert [r.value for r in got] == [b"small", b"after"]


# -- long poll (check 19) ---------------------------------------------------------------------


async def test_a_reader_at_the_end_waits_then_gets_a_new_record_promptly(
    event_log: LogUnderTest,
) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    await log.append(topic, 0, b"k", b"first", timeout_ms=T)
    reader = log.reader(topic, {0: 1})
    try:
        began = time.monotonic()
        assert await reader.poll(10, 300) == []
        assert time.monotonic() - began >= 0.25, "a poll at the end waits for its timeout"

        async def later() -> float:
            await asyncio.sleep(0.2)
            sent = time.monotonic()
            await log.append(topic, 0, b"k", b"late", timeout_ms=T)
            return sent

        task = asyncio.create_task(later())
        began = time.monotonic()
        records = await reader.poll(10, 5000)
        received = time.monotonic()
        sent = await task
        assert [(r.offset, r.value) for r in records] == [(1, b"late")]
        assert received - began < 4, "the poll returned because of the record, not a timeout"
        assert (received - sent) * 1000 < event_log.wait_budget_ms
        assert reader.position(0) == 2
    finally:
        await reader.close()


# -- 3: truncation (check 20) -----------------------------------------------------------------


async def test_delete_records_moves_the_start_and_old_positions_fail(
    event_log: LogUnderTest,
) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    for i in range(3):
        await log.append(topic, 0, b"k", b"v%d" % i, timeout_ms=T)
    assert await log.delete_records(topic, 0, 2) == 2
    assert await log.bounds(topic, 0) == (2, 3)
    assert await log.delete_records(topic, 0, 1) == 2, "below the start: nothing changes"
    assert await log.bounds(topic, 0) == (2, 3)
    with pytest.raises(OffsetOutOfRange):
        await log.delete_records(topic, 0, 4)
    assert await log.bounds(topic, 0) == (2, 3)

    reader = log.reader(topic, {0: 2})
    try:
        await reader.seek(0, 0)
        with pytest.raises(OffsetOutOfRange) as err:
            await poll_until_error(reader)
        assert (err.value.log_start, err.value.end) == (2, 3)
    finally:
        await reader.close()
    assert [(r.offset, r.value) for r in await read_all(log, topic, {0: 2}, 1)] == [(2, b"v2")]
    assert (await log.append(topic, 0, b"k", b"v3", timeout_ms=T)).offset == 3


async def test_a_position_past_the_end_is_out_of_range(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    for i in range(3):
        await log.append(topic, 0, b"k", b"v%d" % i, timeout_ms=T)
    reader = log.reader(topic, {0: 5})
    try:
        with pytest.raises(OffsetOutOfRange) as err:
            await poll_until_error(reader)
        assert (err.value.log_start, err.value.end) == (0, 3)
    finally:
        await reader.close()


# -- 5: timestamps (check 21) -----------------------------------------------------------------


async def test_timestamps_never_decrease_and_offset_for_time(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    assert await log.offset_for_time(topic, 0, 0) is None, "empty partition"
    before = time.time() * 1000
    results = [await log.append(topic, 0, b"k", b"%d" % i, timeout_ms=T) for i in range(1000)]
    after = time.time() * 1000
    assert [r.offset for r in results] == list(range(1000))
    stamps = [r.timestamp_ms for r in results]
    assert stamps == sorted(stamps)
    assert before - 1000 <= stamps[0], "log-append wall time"
    assert stamps[-1] <= after + 1000, "log-append wall time"

    target = stamps[500]
    found = await log.offset_for_time(topic, 0, target)
    assert found is not None
    assert found <= 500
    assert stamps[found] >= target
    assert found == 0 or stamps[found - 1] < target, "the first such offset"
    assert await log.offset_for_time(topic, 0, 0) == 0
    assert await log.offset_for_time(topic, 0, stamps[-1]) == stamps.index(stamps[-1])
    assert await log.offset_for_time(topic, 0, stamps[-1] + 60_000) is None

    read = await read_all(log, topic, {0: 0}, 1000)
    assert [r.timestamp_ms for r in read] == stamps

    await log.delete_records(topic, 0, 600)
    assert await log.offset_for_time(topic, 0, 0) == 600, "never below the log start"


# -- 6: topics --------------------------------------------------------------------------------


async def test_ensure_topic_is_idempotent_and_detects_mismatches(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 3, DELETE)
    await log.ensure_topic(topic, 3, DELETE)
    assert await log.partitions(topic) == 3
    with pytest.raises(TopicMismatch, match="3"):
        await log.ensure_topic(topic, 2, DELETE)
    with pytest.raises(TopicMismatch):
        await log.ensure_topic(topic, 3, COMPACT)
    assert await log.partitions(topic) == 3

    both = event_log.topic("both")
    await log.ensure_topic(both, 1, {"cleanup.policy": "compact,delete"})
    await log.ensure_topic(both, 1, {"cleanup.policy": "delete,compact"})
    with pytest.raises(TopicMismatch):
        await log.ensure_topic(both, 1, COMPACT)


async def test_unknown_topics_and_partitions_are_reported(event_log: LogUnderTest) -> None:
    log, topic, missing = event_log.log, event_log.topic(), event_log.topic("never-created")
    await log.ensure_topic(topic, 3, DELETE)
    with pytest.raises(UnknownTopic):
        await log.partitions(missing)
    with pytest.raises(UnknownTopic):
        await log.bounds(missing, 0)
    with pytest.raises(UnknownTopic):
        await log.append(missing, 0, b"k", b"v", timeout_ms=T)
    with pytest.raises(UnknownTopic):
        await log.append(topic, 3, b"k", b"v", timeout_ms=T)
    with pytest.raises(UnknownTopic):
        await log.bounds(topic, 3)
    reader = log.reader(missing, {0: 0})
    try:
        with pytest.raises(UnknownTopic):
            await reader.poll(10, 100)
    finally:
        await reader.close()
    assert await log.bounds(topic, 0) == (0, 0)


# -- 8: compaction ----------------------------------------------------------------------------


async def test_compacted_topics_keep_the_newest_record_per_key(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic("registry")
    await log.ensure_topic(topic, 1, COMPACT)
    sent = [
        (b"k1", b"a"),
        (b"k2", b"a"),
        (b"k1", b"b"),
        (b"k2", b"b"),
        (b"k3", b"a"),
        (b"k1", b"c"),
        (b"k2", None),  # tombstone: the newest "record" of k2
    ]
    for k, v in sent:
        await log.append(topic, 0, k, v, timeout_ms=T)
    newest = {4: (b"k3", b"a"), 5: (b"k1", b"c"), 6: (b"k2", None)}

    compact = getattr(log, "compact", None)
    if compact is not None:  # memory and embedded compact on demand
        assert await compact(topic) == 4
        got = await read_all(log, topic, {0: 0}, 3)
        assert {r.offset: (r.key, r.value) for r in got} == newest
        assert await log.bounds(topic, 0) == (0, 7), "compaction moves neither start nor end"
        got = await read_all(log, topic, {0: 1}, 2)  # a position inside a compacted gap
        assert [r.offset for r in got] == [4, 5, 6]
        # The tombstone goes once older than delete.retention.ms, unless it is the last record.
        await log.append(topic, 0, b"k4", b"a", timeout_ms=T)
        assert await compact(topic, now_ms=int(time.time() * 1000) + 2 * 86_400_000) == 1
        got = await read_all(log, topic, {0: 0}, 3)
        assert [(r.offset, r.key) for r in got] == [(4, b"k3"), (5, b"k1"), (7, b"k4")]
        assert (await log.append(topic, 0, b"k5", b"a", timeout_ms=T)).offset == 8
    else:  # Kafka's cleaner runs on its own schedule: whatever it did, the newest survive
        got = await read_all(log, topic, {0: 0}, 7)
        kept = {r.offset: (r.key, r.value) for r in got}
        assert newest.items() <= kept.items()
        assert all(kept[o] == sent[o] for o in kept), "surviving offsets are unchanged"


# -- lifecycle --------------------------------------------------------------------------------


async def test_a_closed_log_refuses_appends(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    await log.append(topic, 0, b"k", b"v", timeout_ms=T)
    await log.close()
    with pytest.raises(LogUnavailable):
        await log.append(topic, 0, b"k", b"v", timeout_ms=T)


# -- partition function (check 23) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "partitions", "expected"),
    [
        (b"app1\x00chat-room", 3, 1),
        (b"app1\x00chat-room", 12, 10),
        (b"app1\x00chat-room", 24, 22),
        (b"app1\x00presence-lobby", 3, 2),
        (b"app1\x00presence-lobby", 12, 11),
        (b"app1\x00presence-lobby", 24, 23),
        (b"42\x00private-orders", 3, 2),
        (b"42\x00private-orders", 12, 11),
        (b"42\x00private-orders", 24, 11),
        (b"foobar", 3, 0),
        (b"foobar", 12, 6),
        (b"foobar", 24, 6),
    ],
)
def test_partition_function_matches_kafka(key: bytes, partitions: int, expected: int) -> None:
    assert partition_for(key, partitions) == expected


@pytest.mark.parametrize(
    ("key", "hashed"),
    [
        (b"app1\x00chat-room", -1347956338),
        (b"app1\x00presence-lobby", -1132849089),
        (b"42\x00private-orders", -2058432597),
        (b"foobar", -790332482),
        (b"21", -973932308),
    ],
)
def test_murmur2_matches_kafka(key: bytes, hashed: int) -> None:
    assert murmur2(key) == hashed


def test_channel_key_layout() -> None:
    assert channel_key("app1", "chat-room") == b"app1\x00chat-room"
