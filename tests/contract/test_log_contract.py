"""The log contract (spec 05 §8.2, checks 17-23): one suite, every backend."""

from __future__ import annotations

import asyncio
import time

import pytest

from sockudo.errors import OffsetOutOfRange, RecordTooLarge, TopicMismatch, UnknownTopic
from sockudo.log.base import MAX_RECORD_BYTES, EventLog, LogRecord
from sockudo.log.partitioning import partition_for
from tests.support.log_fixtures import LogUnderTest

DELETE = {"cleanup.policy": "delete"}


def wait_budget_ms(backend: str) -> int:
    return 1000 if backend == "kafka" else 200


async def read_all(
    log: EventLog, topic: str, positions: dict[int, int], count: int
) -> list[LogRecord]:
    reader = log.reader(topic, positions)
    out: list[LogRecord] = []
    deadline = time.monotonic() + 15
    try:
        while len(out) < count and time.monotonic() < deadline:
            out.extend(await reader.poll(500, 200))
    finally:
        await reader.close()
    return out


async def test_offsets_start_at_zero_and_records_round_trip(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    records = [
        (b"k0", b"v0", (("h", b"1"),)),
        (None, b"no-key", ()),
        (b"k2", b"v2", (("a", b""), ("b", b"\x00\xff"))),
    ]
    results = [await log.append(topic, 0, k, v, h, timeout_ms=10_000) for k, v, h in records]
    assert [r.offset for r in results] == [0, 1, 2]
    assert all(r.partition == 0 for r in results)
    assert await log.bounds(topic, 0) == (0, 3)
    got = await read_all(log, topic, {0: 1}, 2)
    assert [(r.offset, r.key, r.value, r.headers) for r in got] == [
        (1, None, b"no-key", ()),
        (2, b"k2", b"v2", (("a", b""), ("b", b"\x00\xff"))),
    ]
    assert [r.timestamp_ms for r in got] == [results[1].timestamp_ms, results[2].timestamp_ms]


async def test_tombstones_round_trip_on_compacted_topics(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic("registry")
    await log.ensure_topic(topic, 1, {"cleanup.policy": "compact"})
    await log.append(topic, 0, b"entity", b"state", timeout_ms=10_000)
    await log.append(topic, 0, b"entity", None, timeout_ms=10_000)
    got = await read_all(log, topic, {0: 0}, 2)
    assert [(r.key, r.value) for r in got] == [(b"entity", b"state"), (b"entity", None)]


async def test_oversized_record_is_refused_and_writes_nothing(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    await log.append(topic, 0, b"k", b"small", timeout_ms=10_000)
    with pytest.raises(RecordTooLarge):
        await log.append(topic, 0, b"k", b"x" * (MAX_RECORD_BYTES + 1), timeout_ms=10_000)
    assert await log.bounds(topic, 0) == (0, 1)
    assert (await log.append(topic, 0, b"k", b"after", timeout_ms=10_000)).offset == 1


async def test_a_waiting_reader_gets_a_new_record_promptly(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    reader = log.reader(topic, {0: 0})
    try:
        assert await reader.poll(10, 100) == []  # warm up: nothing there yet

        async def later() -> float:
            await asyncio.sleep(0.2)
            await log.append(topic, 0, b"k", b"late", timeout_ms=10_000)
            return time.monotonic()

        task = asyncio.create_task(later())
        records = await reader.poll(10, 5000)
        received = time.monotonic()
        appended = await task
        assert [r.value for r in records] == [b"late"]
        assert (received - appended) * 1000 < wait_budget_ms(event_log.backend)
        assert reader.position(0) == 1
    finally:
        await reader.close()


async def test_delete_records_moves_the_start_and_old_positions_fail(
    event_log: LogUnderTest,
) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    for i in range(3):
        await log.append(topic, 0, b"k", f"v{i}".encode(), timeout_ms=10_000)
    assert await log.delete_records(topic, 0, 2) == 2
    assert await log.bounds(topic, 0) == (2, 3)
    reader = log.reader(topic, {0: 2})
    try:
        await reader.seek(0, 0)

        async def poll_a_while() -> None:
            for _ in range(20):  # Kafka may need a fetch round trip to notice
                await reader.poll(10, 200)

        with pytest.raises(OffsetOutOfRange) as err:
            await poll_a_while()
        assert (err.value.log_start, err.value.end) == (2, 3)
    finally:
        await reader.close()
    assert [r.value for r in await read_all(log, topic, {0: 2}, 1)] == [b"v2"]


async def test_timestamps_never_decrease_and_offset_for_time(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 1, DELETE)
    results = []
    for i in range(0, 1000, 100):
        results += await asyncio.gather(
            *(
                log.append(topic, 0, b"k", str(j).encode(), timeout_ms=10_000)
                for j in range(i, i + 100)
            )
        )
    results.sort(key=lambda r: r.offset)
    stamps = [r.timestamp_ms for r in results]
    assert stamps == sorted(stamps)
    target = results[500].timestamp_ms
    found = await log.offset_for_time(topic, 0, target)
    assert found is not None
    assert found <= 500
    assert results[found].timestamp_ms >= target
    assert await log.offset_for_time(topic, 0, stamps[-1] + 60_000) is None


async def test_concurrent_appends_keep_per_partition_order(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 3, DELETE)

    async def producer(writer: int, n: int) -> list[int]:
        p = writer % 3
        return [
            (await log.append(topic, p, b"k", f"{writer}:{i}".encode(), timeout_ms=10_000)).offset
            for i in range(n)
        ]

    offsets = await asyncio.gather(*(producer(w, 40) for w in range(6)))
    for p in range(3):
        assert await log.bounds(topic, p) == (0, 80)
    for got in offsets:
        assert got == sorted(got), "one task's appends keep call order"
    records = await read_all(log, topic, {0: 0, 1: 0, 2: 0}, 240)
    assert len(records) == 240
    for p in range(3):
        mine = [r for r in records if r.partition == p]
        assert [r.offset for r in mine] == list(range(80))
        by_writer: dict[str, list[int]] = {}
        for r in mine:
            assert r.value is not None
            writer, i = r.value.decode().split(":")
            by_writer.setdefault(writer, []).append(int(i))
        assert sorted(by_writer) == sorted(str(w) for w in range(6) if w % 3 == p)
        assert all(seq == list(range(40)) for seq in by_writer.values())


async def test_ensure_topic_is_idempotent_and_detects_mismatches(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 3, DELETE)
    await log.ensure_topic(topic, 3, DELETE)
    assert await log.partitions(topic) == 3
    with pytest.raises(TopicMismatch, match="3"):
        await log.ensure_topic(topic, 2, DELETE)
    with pytest.raises(TopicMismatch):
        await log.ensure_topic(topic, 3, {"cleanup.policy": "compact"})
    with pytest.raises(UnknownTopic):
        await log.partitions(event_log.topic("never-created"))


@pytest.mark.parametrize(
    ("key", "partitions", "expected"),
    [
        (b"app1\x00chat-room", 3, 1),
        (b"app1\x00chat-room", 12, 10),
        (b"app1\x00chat-room", 24, 22),
        (b"app1\x00presence-lobby", 24, 23),
        (b"42\x00private-orders", 12, 11),
        (b"foobar", 12, 6),
    ],
)
def test_partition_function_matches_kafka(key: bytes, partitions: int, expected: int) -> None:
    assert partition_for(key, partitions) == expected
