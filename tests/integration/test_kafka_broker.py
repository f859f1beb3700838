"""The test broker and aiokafka 0.14.0 on it (spec 05 §13 checks 7, 10, 12-16).

These pin down what the design assumes about the pinned Kafka (marked [U] in spec 05 §3.2):
idempotent produce, manual-assign ``read_committed`` reads, topic configs, DeleteRecords,
offsets by time and transactions, all through aiokafka against the session's real broker.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import OffsetOutOfRangeError

from sockudo.errors import OffsetOutOfRange, TopicMismatch
from sockudo.log.kafka import KafkaLog
from tests.support import kafka_broker
from tests.support.kafka_broker import KafkaSetupError, resolve_kafka
from tests.support.kafka_fixtures import KAFKA_RESOLUTION

kafka = pytest.mark.kafka


async def _create(
    admin: Any, name: str, partitions: int = 1, configs: dict[str, str] | None = None
) -> None:
    response = await admin.create_topics(
        [NewTopic(name, partitions, 1, topic_configs=configs or {})]
    )
    assert [code for _name, code, *_ in response.topic_errors] == [0], response
    # CreateTopics returns once the controller committed the topic; the broker serving the
    # next request may apply that metadata a few ms later. Wait until it describes the topic.
    deadline = time.monotonic() + 10
    while (await _topic_configs(admin, name))[0] != 0:
        assert time.monotonic() < deadline, f"topic {name} never became describable"
        await asyncio.sleep(0.05)


async def _topic_configs(admin: Any, name: str) -> tuple[int, dict[str, str]]:
    """``(error_code, {config: value})`` of a topic, as DescribeConfigs reports them."""
    [response] = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, None)]
    )
    code, _message, _type, _name, entries = response.resources[0]
    return code, {entry[0]: entry[1] for entry in entries}


def _consumer(bootstrap: str) -> Any:
    """The consumer settings of spec 05 §3.3."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="none",
        fetch_max_wait_ms=100,
    )


async def _read_all(
    bootstrap: str, tp: Any, start: int, count: int, timeout_s: float = 10.0
) -> list[Any]:
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            records.extend(batch.get(tp, []))
        return records
    finally:
        await consumer.stop()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[Any]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def _listening_addresses(pid: int) -> list[str]:
    """Local addresses of the LISTEN sockets owned by ``pid`` (from /proc, IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                found.append(fields[1])
    return found


@kafka
async def test_single_broker_on_loopback(
    kafka_bootstrap: str, kafka_admin: Any, request: pytest.FixtureRequest
) -> None:
    """§13.7: one broker on 127.0.0.1, ready within 90 s, listening on loopback only."""
    cluster = await kafka_admin.describe_cluster()
    assert len(cluster["brokers"]) == 1
    broker = cluster["brokers"][0]
    assert f"{broker['host']}:{broker['port']}" == kafka_bootstrap

    local = request.config.stash[KAFKA_RESOLUTION].broker
    if local is None:
        pytest.skip(reason="broker is not a LocalKafkaBroker; listener check needs our own JVM")
    assert kafka_bootstrap.startswith("127.0.0.1:")
    assert local.startup_seconds < kafka_broker.START_TIMEOUT_S
    assert local.pid is not None
    addresses = _listening_addresses(local.pid)
    assert len(addresses) == 2, addresses  # PLAINTEXT and CONTROLLER
    # /proc prints IPv4 addresses as little-endian hex: 0100007F is 127.0.0.1.
    assert all(a.startswith("0100007F:") for a in addresses), addresses


@kafka
def test_port_clash_retries_and_teardown_cleans_up(
    kafka_bootstrap: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§13.9 and §13.8: a taken port costs one retry; stop() kills the pid and removes the dir."""
    session = request.config.stash[KAFKA_RESOLUTION].broker
    if session is None:
        pytest.skip(reason="needs the local broker's classpath; the session broker is not local")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        picks = iter([taken])
        real_free_port = kafka_broker.free_port
        # The first port handed out (the first attempt's PLAINTEXT port) is one we hold.
        monkeypatch.setattr(
            kafka_broker, "free_port", lambda: next(picks, None) or real_free_port()
        )
        workdir = tmp_path / "clash"
        workdir.mkdir()
        broker = kafka_broker.LocalKafkaBroker(workdir=workdir, lib=session.lib, java=session.java)
        try:
            bootstrap = broker.start()
            pid = broker.pid
            assert bootstrap != f"127.0.0.1:{taken}"
            assert "Address already in use" in broker.log_path.read_text()
        finally:
            broker.stop()
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()
    assert not workdir.exists()


def test_unreachable_bootstrap_is_an_error_not_a_skip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§13.10: SOCKUDO_KAFKA_BOOTSTRAP=127.0.0.1:1 fails naming the address; no JVM starts.

    Calls the resolution function directly (the session fixture is already resolved) with a
    short wait; the 30 s default is the same code path with a longer deadline.
    """

    def no_broker(*_args: object, **_kwargs: object) -> str:
        raise AssertionError("a local broker must not start when SOCKUDO_KAFKA_BOOTSTRAP is set")

    monkeypatch.setattr(kafka_broker.LocalKafkaBroker, "start", no_broker)
    began = time.monotonic()
    with pytest.raises(KafkaSetupError, match=r"127\.0\.0\.1:1\b"):
        resolve_kafka(
            lambda: pytest.fail("no work dir may be created"),
            env={"SOCKUDO_KAFKA_BOOTSTRAP": "127.0.0.1:1", "SOCKUDO_KAFKA_MODE": "auto"},
            bootstrap_timeout_s=2.0,
        )
    assert time.monotonic() - began < 30


@kafka
async def test_idempotent_produce_and_read_committed(
    kafka_bootstrap: str, kafka_admin: Any, producer: Any, topic_prefix: str
) -> None:
    """§13.12: 100 idempotent sends land at offsets 0..99 and read back in order."""
    topic = f"{topic_prefix}.produce"
    await _create(kafka_admin, topic)
    values = [f"value-{i}".encode() for i in range(100)]
    offsets = [(await producer.send_and_wait(topic, value, partition=0)).offset for value in values]
    assert offsets == list(range(100))

    records = await _read_all(kafka_bootstrap, TopicPartition(topic, 0), 0, 100)
    assert [r.value for r in records] == values
    assert [r.offset for r in records] == list(range(100))


@kafka
async def test_topic_configs_and_partition_mismatch(
    kafka_bootstrap: str, kafka_admin: Any, topic_prefix: str
) -> None:
    """§13.13: configs are applied; an existing topic with other partitions is refused."""
    topic = f"{topic_prefix}.configs"
    await _create(kafka_admin, topic, 3, {"message.timestamp.type": "LogAppendTime"})
    code, entries = await _topic_configs(kafka_admin, topic)
    assert code == 0
    assert entries["message.timestamp.type"] == "LogAppendTime"

    existing = f"{topic_prefix}.channel-events"
    await _create(kafka_admin, existing, 2)
    log = KafkaLog(kafka_bootstrap)
    await log.start()
    try:
        with pytest.raises(TopicMismatch) as info:
            await log.ensure_topic(existing, 3, {"cleanup.policy": "delete"})
        message = str(info.value)
        assert existing in message
        assert "expected 3" in message
        assert "actual 2" in message
        with pytest.raises(TopicMismatch, match=r"cleanup\.policy"):
            await log.ensure_topic(existing, 2, {"cleanup.policy": "compact"})
        await log.ensure_topic(existing, 2, {"cleanup.policy": "delete"})  # matches: no error
    finally:
        await log.close()


@kafka
async def test_delete_records_moves_log_start(
    kafka_bootstrap: str, kafka_admin: Any, producer: Any, topic_prefix: str
) -> None:
    """§13.14: DeleteRecords(50) → log start 50; reading from 10 is out of range."""
    topic = f"{topic_prefix}.truncate"
    tp = TopicPartition(topic, 0)
    await _create(kafka_admin, topic)
    batch = [await producer.send(topic, b"x%d" % i, partition=0) for i in range(100)]
    await asyncio.gather(*batch)

    low = await kafka_admin.delete_records({tp: RecordsToDelete(50)})
    assert low == {tp: 50}
    consumer = _consumer(kafka_bootstrap)
    await consumer.start()
    try:
        assert await consumer.beginning_offsets([tp]) == {tp: 50}
        assert await consumer.end_offsets([tp]) == {tp: 100}
        consumer.assign([tp])
        consumer.seek(tp, 10)
        with pytest.raises(OffsetOutOfRangeError):
            await consumer.getmany(tp, timeout_ms=5000)
    finally:
        await consumer.stop()

    # The same through the log contract: the error carries the bounds.
    log = KafkaLog(kafka_bootstrap)
    await log.start()
    try:
        reader = log.reader(topic, {0: 10})
        with pytest.raises(OffsetOutOfRange) as info:
            await reader.poll(10, 5000)
        assert (info.value.log_start, info.value.end) == (50, 100)
        await reader.seek(0, 50)
        assert [r.offset for r in await reader.poll(1, 5000)] == [50]
    finally:
        await log.close()


@kafka
async def test_offsets_for_times(
    kafka_bootstrap: str, kafka_admin: Any, producer: Any, topic_prefix: str
) -> None:
    """§13.15: offsets_for_times finds record 20 by its timestamp; past the end is None."""
    topic = f"{topic_prefix}.times"
    tp = TopicPartition(topic, 0)
    await _create(kafka_admin, topic, 1, {"message.timestamp.type": "LogAppendTime"})
    stamps = []
    for i in range(30):
        meta = await producer.send_and_wait(topic, b"t%d" % i, partition=0)
        stamps.append(meta.timestamp)
        await asyncio.sleep(0.005)
    assert stamps == sorted(stamps)
    assert stamps[19] < stamps[20]

    consumer = _consumer(kafka_bootstrap)
    await consumer.start()
    try:
        found = await consumer.offsets_for_times({tp: stamps[20]})
        assert found[tp] is not None
        assert found[tp].offset == 20
        assert await consumer.offsets_for_times({tp: stamps[-1] + 60_000}) == {tp: None}
    finally:
        await consumer.stop()


class _AbortError(Exception):
    pass


async def _aborted_transaction(producer: Any, topic: str, values: list[bytes]) -> None:
    async with producer.transaction():
        for value in values:
            await producer.send(topic, value, partition=0)
        raise _AbortError  # leaving the block with an exception aborts the transaction


@kafka
async def test_transactions_hide_aborted_records(
    kafka_bootstrap: str, kafka_admin: Any, topic_prefix: str
) -> None:
    """§13.16: one committed transaction of 3 and one aborted of 2 → readers see the 3."""
    topic = f"{topic_prefix}.txn"
    tp = TopicPartition(topic, 0)
    await _create(kafka_admin, topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic_prefix}-txn"
    )
    await producer.start()
    try:
        async with producer.transaction():
            for value in (b"c1", b"c2", b"c3"):
                await producer.send(topic, value, partition=0)
        with pytest.raises(_AbortError):
            await _aborted_transaction(producer, topic, [b"a1", b"a2"])
    finally:
        await producer.stop()

    records = await _read_all(kafka_bootstrap, tp, 0, 3)
    assert [r.value for r in records] == [b"c1", b"c2", b"c3"]
    # Nothing else arrives: the aborted pair and the control markers are invisible.
    assert await _read_all(kafka_bootstrap, tp, records[-1].offset + 1, 1, timeout_s=1.0) == []
