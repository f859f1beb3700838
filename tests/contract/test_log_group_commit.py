"""Concurrent appends that need many batches (spec 05 §8.2 semantics 1 and 2), every backend.

The Kafka backend group-commits appends into batches of at most 256 KiB per partition; here
the appends of one round do not fit into one batch, and some records are larger than a batch
by themselves, so batches spill over and records travel alone. Every acknowledgement must
still name the record it wrote, and one task's appends must keep call order.
"""

from __future__ import annotations

import asyncio

from sockudo.log.base import AppendResult
from sockudo.log.partitioning import channel_key, partition_for
from tests.support.log_fixtures import LogUnderTest, read_all

DELETE = {"cleanup.policy": "delete"}
T = 30_000
TASKS = 40
PER_TASK = 25


def value_for(task: int, i: int) -> bytes:
    # 12 KiB records: with 15-25 tasks per partition, more is waiting than one 256 KiB Kafka
    # batch holds. Now and then a record larger than a whole batch by itself.
    size = 300_000 if i % 10 == 9 and task % 8 == 0 else 12_288
    return (b"%d:%d:" % (task, i)).ljust(size, b".")


async def test_appends_spanning_many_batches_name_their_records(event_log: LogUnderTest) -> None:
    log, topic = event_log.log, event_log.topic()
    await log.ensure_topic(topic, 2, DELETE)
    keys = [channel_key("app1", f"room-{t}") for t in range(TASKS)]

    async def appender(task: int) -> list[AppendResult]:
        key = keys[task]
        p = partition_for(key, 2)
        return [
            await log.append(topic, p, key, value_for(task, i), [("i", b"%d" % i)], timeout_ms=T)
            for i in range(PER_TASK)
        ]

    per_task = await asyncio.gather(*(appender(t) for t in range(TASKS)))
    per_partition: dict[int, list[int]] = {0: [], 1: []}
    for results in per_task:
        offsets = [r.offset for r in results]
        assert offsets == sorted(offsets), "one task's appends keep call order"
        for r in results:
            per_partition[r.partition].append(r.offset)
    for p, offsets in per_partition.items():
        assert sorted(offsets) == list(range(len(offsets))), f"partition {p}: contiguous"

    total = TASKS * PER_TASK
    records = await read_all(log, topic, {0: 0, 1: 0}, total, timeout_s=20, max_records=1000)
    assert len(records) == total
    stored = {(r.partition, r.offset): (r.key, r.value, r.headers) for r in records}
    for task, results in enumerate(per_task):
        assert [stored[(r.partition, r.offset)] for r in results] == [
            (keys[task], value_for(task, i), (("i", b"%d" % i),)) for i in range(PER_TASK)
        ], "every acknowledgement names the record it wrote"
