"""KafkaLog's group commit (append -> per-partition batches) against a scripted producer.

The real broker runs the contract suite; these tests script aiokafka's side instead (the
batch API ``create_batch``/``send_batch`` and the leader check) so that every outcome can be
forced: acknowledgements with a chosen base offset, refusals, broker errors, timeouts while
queued or while on the wire, cancellation and close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import RecordMetadata

from sockudo.errors import AppendOutcomeUnknown, LogUnavailable, RecordTooLarge
from sockudo.log.base import MAX_RECORD_BYTES, AppendResult
from sockudo.log.kafka import KafkaLog

TOPIC = "t.events"
T = 5_000


@dataclass
class Sent:
    """One batch handed to the scripted producer."""

    partition: int
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]]
    """(key, value, headers, client timestamp) in batch order."""
    future: asyncio.Future[Any]

    def ack(self, base: int, timestamp: int = 1_700_000_000_000) -> None:
        tp = TopicPartition(TOPIC, self.partition)
        self.future.set_result(RecordMetadata(TOPIC, self.partition, tp, base, timestamp, 1, 0))

    def fail(self, exc: Exception) -> None:
        self.future.set_exception(exc)


class _Cluster:
    def leader_for_partition(self, tp: Any) -> int:
        return 1


class _Client:
    def __init__(self) -> None:
        self.cluster = _Cluster()
        self.reachable = True

    async def ready(self, node_id: int) -> bool:
        return self.reachable


class ScriptedProducer:
    """Just the part of AIOKafkaProducer that KafkaLog.append uses."""

    def __init__(self) -> None:
        self.client = _Client()
        self.sent: list[Sent] = []
        self.refuse: Exception | None = None
        self.stopped = False

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(262_144, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        assert topic == TOPIC
        if self.refuse is not None:
            raise self.refuse
        assert batch.closed(), "KafkaLog hands over complete batches"
        parsed = MemoryRecords(bytes(batch._build())).next_batch()
        assert parsed is not None
        records = [(r.key, r.value, list(r.headers), r.timestamp) for r in parsed]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append(Sent(partition, records, future))
        return future

    async def stop(self) -> None:
        self.stopped = True

    async def batches(self, n: int) -> list[Sent]:
        """Wait (briefly) until ``n`` batches were sent; return them all."""
        for _ in range(200):
            if len(self.sent) >= n:
                break
            await asyncio.sleep(0.005)
        assert len(self.sent) == n, [len(s.records) for s in self.sent]
        return self.sent


@pytest.fixture
async def kafka() -> AsyncIterator[tuple[KafkaLog, ScriptedProducer]]:
    log = KafkaLog("127.0.0.1:1")
    producer = ScriptedProducer()
    log._producer = producer
    log._partition_counts[TOPIC] = 2
    yield log, producer
    for queue in log._queues.values():
        if queue.flusher is not None:
            queue.flusher.cancel()
    if log._watchdog is not None:
        log._watchdog.cancel()


def spawn(log: KafkaLog, *values: bytes, partition: int = 0, timeout_ms: int = T) -> list[Any]:
    return [
        asyncio.ensure_future(log.append(TOPIC, partition, b"k", v, timeout_ms=timeout_ms))
        for v in values
    ]


async def test_concurrent_appends_share_a_batch_and_get_base_plus_index(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    tasks = spawn(log, b"a", b"b", b"c", b"d")
    (batch,) = await producer.batches(1)
    assert [(k, v) for k, v, _h, _ts in batch.records] == [
        (b"k", b"a"),
        (b"k", b"b"),
        (b"k", b"c"),
        (b"k", b"d"),
    ]
    batch.ack(40, timestamp=1234)
    assert await asyncio.gather(*tasks) == [AppendResult(0, 40 + i, 1234) for i in range(4)]


async def test_appends_during_a_flight_form_the_next_batch_after_the_ack(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    first = spawn(log, b"a")
    (batch,) = await producer.batches(1)
    later = spawn(log, b"b", b"c")
    await asyncio.sleep(0.02)
    assert len(producer.sent) == 1, "nothing goes out while the partition's batch is in flight"
    batch.ack(7)
    assert (await first[0]).offset == 7
    second = (await producer.batches(2))[1]
    assert [v for _k, v, _h, _ts in second.records] == [b"b", b"c"]
    second.ack(8)
    assert [r.offset for r in await asyncio.gather(*later)] == [8, 9]


async def test_partitions_are_batched_independently(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    p0 = spawn(log, b"x", b"y", partition=0)
    p1 = spawn(log, b"z", partition=1)
    batches = await producer.batches(2)
    by_partition = {b.partition: b for b in batches}
    by_partition[1].ack(100)
    by_partition[0].ack(0)
    assert [(r.partition, r.offset) for r in await asyncio.gather(*p0, *p1)] == [
        (0, 0),
        (0, 1),
        (1, 100),
    ]


async def test_a_full_batch_spills_into_the_next_one_in_order(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    big = [bytes([65 + i]) * 100_000 for i in range(3)]
    tasks = spawn(log, *big, b"small")
    (first,) = await producer.batches(1)
    assert [v for _k, v, _h, _ts in first.records] == big[:2]
    first.ack(0)
    second = (await producer.batches(2))[1]
    assert [v for _k, v, _h, _ts in second.records] == [big[2], b"small"]
    second.ack(2)
    assert [r.offset for r in await asyncio.gather(*tasks)] == [0, 1, 2, 3]


async def test_keys_values_headers_and_empty_records_are_encoded(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    headers = [("sk.type", b"channel.publish"), ("empty", b"")]
    task = asyncio.ensure_future(log.append(TOPIC, 0, None, None, headers, timeout_ms=T))
    other = asyncio.ensure_future(log.append(TOPIC, 0, b"\x00k", b"", (), timeout_ms=T))
    await asyncio.sleep(0)  # both calls ran up to their wait
    headers.append(("late", b"1"))  # the caller's list changing later changes nothing
    (batch,) = await producer.batches(1)
    assert [(k, v, h) for k, v, h, _ts in batch.records] == [
        (None, None, [("sk.type", b"channel.publish"), ("empty", b"")]),
        (b"\x00k", b"", []),
    ]
    batch.ack(0)
    await asyncio.gather(task, other)


async def test_create_time_topics_report_each_records_own_timestamp(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    tasks = spawn(log, b"a", b"b")
    (batch,) = await producer.batches(1)
    batch.ack(0, timestamp=-1)  # the broker's answer for a CreateTime topic
    results = await asyncio.gather(*tasks)
    assert [r.timestamp_ms for r in results] == [ts for _k, _v, _h, ts in batch.records]
    assert all(r.timestamp_ms > 1_600_000_000_000 for r in results)


async def test_records_over_the_limit_are_refused_before_queueing(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    with pytest.raises(RecordTooLarge):
        await log.append(TOPIC, 0, b"k", b"x" * (MAX_RECORD_BYTES + 1), timeout_ms=T)
    # The value alone fits; with the key and headers the serialized record does not.
    value = b"x" * (MAX_RECORD_BYTES - 10)
    with pytest.raises(RecordTooLarge):
        await log.append(TOPIC, 0, b"k" * 20, value, [("h", b"y" * 20)], timeout_ms=T)
    await asyncio.sleep(0.01)
    assert producer.sent == []


async def test_broker_rejections_map_to_the_log_errors(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    too_large = spawn(log, b"a", b"b")
    (batch,) = await producer.batches(1)
    batch.fail(kafka_errors.MessageSizeTooLargeError())
    for task in too_large:
        with pytest.raises(RecordTooLarge):
            await task

    unknown = spawn(log, b"c", b"d")
    batch = (await producer.batches(2))[1]
    batch.fail(kafka_errors.RequestTimedOutError())
    errors = [await asyncio.gather(t, return_exceptions=True) for t in unknown]
    assert all(isinstance(e[0], AppendOutcomeUnknown) for e in errors)
    assert errors[0][0] is not errors[1][0], "every append gets its own exception"

    producer.refuse = kafka_errors.KafkaTimeoutError()
    with pytest.raises(LogUnavailable):
        await log.append(TOPIC, 0, b"k", b"e", timeout_ms=T)


async def test_an_unreachable_leader_means_nothing_was_written(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    producer.client.reachable = False
    with pytest.raises(LogUnavailable, match="unreachable"):
        await log.append(TOPIC, 0, b"k", b"v", timeout_ms=T)
    assert producer.sent == []
    producer.client.reachable = True
    task = spawn(log, b"w")[0]
    (await producer.batches(1))[0].ack(0)
    assert (await task).offset == 0


async def test_timeouts_tell_queued_from_sent_appends(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    on_the_wire = spawn(log, b"a", timeout_ms=50)[0]
    (batch,) = await producer.batches(1)
    queued = spawn(log, b"b", timeout_ms=50)[0]
    with pytest.raises(AppendOutcomeUnknown):
        await on_the_wire  # may still be written: the batch was handed to aiokafka
    with pytest.raises(LogUnavailable):
        await queued  # never left KafkaLog
    batch.ack(0)
    await asyncio.sleep(0.02)
    assert len(producer.sent) == 1, "an expired queued append is never sent"


async def test_a_cancelled_queued_append_is_not_sent(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    first = spawn(log, b"a")[0]
    (batch,) = await producer.batches(1)
    dropped, kept = spawn(log, b"b", b"c")
    await asyncio.sleep(0)
    dropped.cancel()
    batch.ack(0)
    await first
    second = (await producer.batches(2))[1]
    assert [v for _k, v, _h, _ts in second.records] == [b"c"]
    second.ack(1)
    assert (await kept).offset == 1


async def test_close_still_sends_what_was_queued_and_refuses_new_appends(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    first = spawn(log, b"a")[0]
    (batch,) = await producer.batches(1)
    queued = spawn(log, b"b")[0]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(log.close())
    await asyncio.sleep(0.01)
    with pytest.raises(LogUnavailable):
        await log.append(TOPIC, 0, b"k", b"late", timeout_ms=T)
    assert not closing.done()
    batch.ack(0)
    second = (await producer.batches(2))[1]
    second.ack(1)
    await closing
    assert [(await first).offset, (await queued).offset] == [0, 1]
    assert producer.stopped


async def test_each_append_keeps_its_own_timeout(
    kafka: tuple[KafkaLog, ScriptedProducer],
) -> None:
    log, producer = kafka
    patient = spawn(log, b"a", timeout_ms=30_000)[0]
    (batch,) = await producer.batches(1)
    loop = asyncio.get_running_loop()
    began = loop.time()
    hasty = spawn(log, b"b", timeout_ms=50)[0]  # an earlier deadline than the armed one
    with pytest.raises(LogUnavailable):
        await hasty
    assert loop.time() - began < 1.0
    second = spawn(log, b"c", timeout_ms=50)[0]  # the watchdog re-arms after firing
    with pytest.raises(LogUnavailable):
        await second
    assert not patient.done()
    batch.ack(0)
    assert (await patient).offset == 0
