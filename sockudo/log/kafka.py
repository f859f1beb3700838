"""The Kafka backend of the event log (spec 05 §3, §8.2), built on aiokafka 0.14.0.

One ``KafkaLog`` owns three long-lived clients: an idempotent producer for appends, an admin
client for topics and truncation, and an unassigned consumer that only answers offset queries
(log start, end, offset for a time). Each ``reader()`` gets its own consumer with manual
assignment, because positions live in the projection (§7.3), never in consumer groups.

aiokafka is untyped, so values coming out of it are converted to plain ``int``/``bytes`` at the
boundary; every aiokafka error is translated into the ``sockudo.errors`` tree here and nowhere
else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from sockudo.errors import (
    AppendOutcomeUnknown,
    LogError,
    LogUnavailable,
    OffsetOutOfRange,
    RecordTooLarge,
    UnknownTopic,
)
from sockudo.log.base import (
    MAX_RECORD_BYTES,
    AppendResult,
    LogRecord,
    Watchdog,
    check_existing_topic,
    check_partition,
)

__all__ = ["KafkaLog", "KafkaReader"]

log = logging.getLogger(__name__)

# aiokafka keeps one produce request in flight per broker, with one batch per partition, so a
# partition moves at most one batch per round trip and bigger batches carry more per trip.
# Measured on 2 cores, 1000 appenders of 200 B: 8.5k (64 KiB) vs 16k appends/s (256 KiB) with
# aiokafka's send(); ~53k vs ~70k with the group commit below (whose batches, built with
# create_batch, get this limit too). Still well under max_request_size.
_MAX_BATCH_BYTES = 262_144
# The broker always returns at least one whole batch, but leave room for a maximal record plus
# its batch header so a single large record never needs a second round trip.
_MAX_PARTITION_FETCH_BYTES = MAX_RECORD_BYTES + 65_536
_FETCH_MAX_WAIT_MS = 100
# The append watchdog scans every unsettled append when it fires; re-arming it no sooner than
# this keeps a stalled broker with many waiting appends from turning into back-to-back scans.
# Appends may so fail up to this much after their timeout_ms.
_WATCHDOG_SLACK_S = 0.01
_TOPIC_ALREADY_EXISTS = kafka_errors.TopicAlreadyExistsError.errno
_UNKNOWN_TOPIC = kafka_errors.UnknownTopicOrPartitionError.errno
_TOO_LARGE = (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordListTooLargeError)


# One append waiting for its batch: (future, key, value, headers, deadline on the loop clock).
_Pending = tuple[
    "asyncio.Future[AppendResult]", bytes | None, bytes | None, list[tuple[str, bytes]], float
]


class _PartitionQueue:
    """The appends of one partition that are not settled yet, and the task sending them."""

    __slots__ = ("flusher", "inflight", "queued", "since", "tp")

    def __init__(self, tp: Any) -> None:
        self.tp = tp
        self.queued: list[_Pending] = []
        """In call order, not yet in a batch: failing them writes nothing."""
        self.since = 0.0
        """Loop time at which ``queued`` last became non-empty (for ``linger_ms``)."""
        self.inflight: list[_Pending] = []
        """The batch handed to aiokafka: on failure the outcome is unknown."""
        self.flusher: asyncio.Task[None] | None = None


def _fill(batch: Any, queue: _PartitionQueue) -> tuple[list[_Pending], list[int]]:
    """Move queued appends into ``batch`` in call order until it is full.

    Returns the appends taken (record ``i`` of the batch is ``taken[i]``) and each record's
    client timestamp. The first record always fits: a batch takes one record of any size.
    """
    queued = queue.queued
    taken: list[_Pending] = []
    stamps: list[int] = []
    used = 0
    for item in queued:
        if item[0].done():  # timed out or cancelled while queued: never sent
            used += 1
            continue
        meta = batch.append(timestamp=None, key=item[1], value=item[2], headers=item[3])
        if meta is None:
            break  # full: the rest goes into the next batch
        taken.append(item)
        stamps.append(meta.timestamp)
        used += 1
    del queued[:used]
    return taken, stamps


def _fail(
    entries: list[_Pending], error: type[LogError], message: str, cause: BaseException | None
) -> None:
    """Fail every unsettled append with its own ``error(message)`` (raised ``from cause``).

    One instance per append: a shared exception would collect every raiser's traceback.
    """
    for item in entries:
        fut = item[0]
        if not fut.done():
            exc = error(message)
            exc.__cause__ = cause
            fut.set_exception(exc)


def _name(tp: Any) -> str:
    return f"{tp.topic}[{tp.partition}]"


CLIENT_STOP_TIMEOUT_S = 10.0
"""How long closing waits for an aiokafka client to stop. A producer's stop delivers what it
still holds, which with the broker out of reach would wait for its delivery timeout; those
records were never acknowledged, and the node is going."""


async def _bounded_stop(stop: Awaitable[Any], what: str) -> None:
    try:
        await asyncio.wait_for(stop, CLIENT_STOP_TIMEOUT_S)
    except TimeoutError:
        log.warning("%s did not stop within %.0f s; going on", what, CLIENT_STOP_TIMEOUT_S)


class KafkaLog:
    """An ``EventLog`` on an Apache Kafka cluster (KRaft, 4.x; 3.9 works too).

    Appends go through one idempotent producer (``acks=all``) with the partition always given
    explicitly, so the embedded log and Kafka place a key identically (§6.2). Concurrent
    ``append`` calls are group-committed per partition: each queues its record and awaits its
    own future; one flusher task per partition packs everything queued into one batch
    (``create_batch``/``send_batch``), and when the broker acknowledges it, record ``i`` of the
    batch got offset ``base + i``. That skips aiokafka's per-record ``send()`` machinery (a
    coroutine, a future and a metadata check per record), which capped throughput. Topics
    the log creates default to ``message.timestamp.type=LogAppendTime`` because the contract
    promises broker-assigned, non-decreasing timestamps.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "sockudo",
        linger_ms: int = 0,
        replication_factor: int | None = None,
        request_timeout_ms: int = 10000,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._replication_factor = replication_factor
        self._request_timeout_ms = request_timeout_ms
        self._producer: Any = None
        self._admin: Any = None
        self._offsets: Any = None
        # Partition counts never change (§6.2: changing them would remap keys), so one
        # metadata lookup per topic is enough for the life of the log.
        self._partition_counts: dict[str, int] = {}
        self._readers: set[KafkaReader] = set()
        self._queues: dict[tuple[str, int], _PartitionQueue] = {}
        self._watchdog = Watchdog(self._expire_overdue)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._producer is not None:
            return
        common: dict[str, Any] = {
            "bootstrap_servers": self._bootstrap,
            "client_id": self._client_id,
            "request_timeout_ms": self._request_timeout_ms,
        }
        producer = AIOKafkaProducer(
            **common,
            enable_idempotence=True,
            acks="all",
            # append() builds and closes its own batches and applies linger_ms itself (_flush).
            linger_ms=0,
            max_batch_size=_MAX_BATCH_BYTES,
            max_request_size=MAX_RECORD_BYTES,
        )
        admin = AIOKafkaAdminClient(**common)
        offsets = AIOKafkaConsumer(**common, group_id=None, enable_auto_commit=False)
        try:
            await producer.start()
            await admin.start()
            await offsets.start()
        except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
            # Stopping is safe on clients that never started, and needed for the one that
            # failed half-way: aiokafka warns about unclosed clients when they are collected.
            for client in (producer, offsets, admin):
                await self._stop_client(client)
            raise LogUnavailable(f"cannot connect to Kafka at {self._bootstrap}: {exc}") from exc
        self._producer, self._admin, self._offsets = producer, admin, offsets

    async def close(self) -> None:
        for reader in list(self._readers):
            await reader.close()
        producer, admin, offsets = self._producer, self._admin, self._offsets
        self._producer = self._admin = self._offsets = None
        # Appends already queued are still sent (new ones are refused from here on), then the
        # producer goes first: its stop() delivers whatever aiokafka still holds.
        flushers = [q.flusher for q in self._queues.values() if q.flusher is not None]
        if flushers:
            await _bounded_stop(asyncio.gather(*flushers, return_exceptions=True), "appends")
        self._queues.clear()
        self._watchdog.cancel()
        for client in (producer, offsets, admin):
            if client is not None:
                await self._stop_client(client)

    @staticmethod
    async def _stop_client(client: Any) -> None:
        stop = client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop()
        await _bounded_stop(stop, type(client).__name__)

    def _require(self, client: Any) -> Any:
        if client is None:
            raise LogUnavailable("KafkaLog is not started (or already closed)")
        return client

    # -- topics --------------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        return True

    @property
    def failure(self) -> BaseException | None:
        return None  # a broker outage passes: appends fail meanwhile, then go on

    async def ensure_topic(self, name: str, partitions: int, config: Mapping[str, str]) -> None:
        admin = self._require(self._admin)
        configs = dict(config)
        configs.setdefault("message.timestamp.type", "LogAppendTime")
        async with self._translate(f"create topic {name}"):
            rf = self._replication_factor or await self._default_replication_factor()
            response = await admin.create_topics(
                [NewTopic(name, partitions, rf, topic_configs=configs)]
            )
        for topic, code, *rest in response.topic_errors:
            if topic != name or code == 0:
                continue
            if code == _TOPIC_ALREADY_EXISTS:
                await self._check_existing(name, partitions, configs)
                return
            detail = rest[0] if rest and rest[0] else kafka_errors.for_code(code).__name__
            raise LogError(f"cannot create topic {name}: {detail}")
        await self._wait_for_leaders(name, partitions)
        self._partition_counts[name] = partitions

    async def _default_replication_factor(self) -> int:
        cluster = await self._require(self._admin).describe_cluster()
        return max(1, min(3, len(cluster["brokers"])))

    async def _check_existing(self, name: str, partitions: int, configs: Mapping[str, str]) -> None:
        # "Already exists" comes from the controller; the broker answering our describes may
        # not have applied that metadata yet (another node created the topic a moment ago),
        # so an unknown topic is retried until the request timeout before it counts.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._request_timeout_ms / 1000
        while True:
            try:
                actual = await self._lookup_partitions(name)
                if actual is None:
                    raise UnknownTopic(f"topic {name} reported as existing but not in metadata")
                actual_policy = await self._topic_config(name, "cleanup.policy")
                break
            except UnknownTopic:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)
        check_existing_topic(name, partitions, configs, actual, actual_policy)
        self._partition_counts[name] = actual

    async def _topic_config(self, name: str, key: str) -> str | None:
        admin = self._require(self._admin)
        async with self._translate(f"describe configs of {name}"):
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, {key: None})]
            )
        for response in responses:
            for code, message, _type, resource, entries in response.resources:
                if resource != name:
                    continue
                if code == _UNKNOWN_TOPIC:
                    raise UnknownTopic(f"topic {name} does not exist")
                if code:
                    raise LogError(f"describe configs of {name} failed: {message or code}")
                for entry in entries:
                    if entry[0] == key:
                        return str(entry[1]) if entry[1] is not None else None
        return None

    async def _topic_metadata(self, name: str) -> dict[str, Any] | None:
        admin = self._require(self._admin)
        # Ask for all topics: a Metadata request naming a missing topic lets a broker with
        # auto.create.topics.enable=true (Kafka's default) create it with default partitions.
        async with self._translate(f"describe topic {name}"):
            topics = await admin.describe_topics(None)
        for topic in topics:
            if topic["topic"] == name and topic["error_code"] != _UNKNOWN_TOPIC:
                return dict(topic)
        return None

    async def _lookup_partitions(self, name: str) -> int | None:
        meta = await self._topic_metadata(name)
        return None if meta is None else len(meta["partitions"])

    async def _wait_for_leaders(self, name: str, partitions: int) -> None:
        # CreateTopics returns once the controller committed the topic; the broker's metadata
        # (and thus produce/ListOffsets) may lag a few ms behind. Wait so the next call works.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._request_timeout_ms / 1000
        while True:
            meta = await self._topic_metadata(name)
            leaders = [] if meta is None else [p["leader"] for p in meta["partitions"]]
            if len(leaders) == partitions and all(leader >= 0 for leader in leaders):
                return
            if loop.time() >= deadline:
                raise LogUnavailable(f"topic {name} created but its partitions have no leader")
            await asyncio.sleep(0.05)

    async def partitions(self, topic: str) -> int:
        cached = self._partition_counts.get(topic)
        if cached is not None:
            return cached
        count = await self._lookup_partitions(topic)
        if count is None:
            raise UnknownTopic(f"topic {topic} does not exist")
        self._partition_counts[topic] = count
        return count

    async def _topic_partition(self, topic: str, partition: int) -> Any:
        count = await self.partitions(topic)
        check_partition(topic, count, partition)
        return TopicPartition(topic, partition)

    # -- appends -------------------------------------------------------------------------

    async def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
        *,
        timeout_ms: int,
    ) -> AppendResult:
        # The hot path (one call per record): no awaits before the record is queued once the
        # partition is known, no per-call timers; the record is encoded by the flusher.
        producer = self._require(self._producer)
        if value is not None and len(value) > MAX_RECORD_BYTES:
            raise RecordTooLarge(
                f"value of {len(value)} bytes exceeds the limit of {MAX_RECORD_BYTES} bytes"
            )
        # A copy (encoded later, so a caller's list must not change under us), and a list:
        # aiokafka's C record builder accepts nothing else.
        header_list = list(headers)
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, header_list)
        if size > MAX_RECORD_BYTES:
            # The check aiokafka's send() made (max_request_size): the broker would reject the
            # whole batch, and with it every other record sharing the batch.
            raise RecordTooLarge(
                f"record of {size} bytes when serialized exceeds the limit of "
                f"{MAX_RECORD_BYTES} bytes"
            )
        queue = self._queues.get((topic, partition))
        if queue is None:
            queue = await self._partition_queue(topic, partition)
            producer = self._require(self._producer)  # closed while we looked the topic up
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AppendResult] = loop.create_future()
        now = loop.time()
        deadline = now + timeout_ms / 1000
        if not queue.queued:
            queue.since = now
        queue.queued.append((fut, key, value, header_list, deadline))
        if queue.flusher is None:
            queue.flusher = loop.create_task(self._flush(producer, queue))
        self._watchdog.arm(loop, deadline)
        return await fut

    async def _partition_queue(self, topic: str, partition: int) -> _PartitionQueue:
        tp = await self._topic_partition(topic, partition)
        # Another append may have created it while we awaited the partition count.
        queue = self._queues.get((topic, partition))
        if queue is None:
            queue = self._queues[(topic, partition)] = _PartitionQueue(tp)
        return queue

    async def _flush(self, producer: Any, queue: _PartitionQueue) -> None:
        """Send the queued appends of one partition, one batch at a time, until none is left.

        Group commit: while a batch is on the wire, new appends wait in ``queue.queued``; once
        it is acknowledged they all go out as the next batch. aiokafka has at most one produce
        request in flight per broker and puts at most one batch per partition into it, so
        building the next batch only after the previous one is acknowledged costs no
        throughput, and it keeps everything not yet in a batch recallable: those appends can
        still fail as "definitely not written". Sequence numbers (idempotence) are assigned
        by aiokafka per batch when it drains it, as for its own batches.
        """
        tp = queue.tp
        loop = asyncio.get_running_loop()
        linger = self._linger_ms / 1000
        try:
            while queue.queued:
                if linger > 0:
                    # Kafka's linger.ms: the first waiting record waits at most this long for
                    # others to join its batch.
                    delay = queue.since + linger - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                try:
                    await self._leader_reachable(producer, tp)
                except LogUnavailable as exc:
                    _fail(queue.queued, LogUnavailable, str(exc), exc.__cause__)
                    queue.queued = []
                    continue
                batch = producer.create_batch()
                taken, stamps = _fill(batch, queue)
                if not taken:
                    continue  # everything queued had timed out or was cancelled
                batch.close()  # complete: aiokafka sends it as soon as the broker is free
                queue.inflight = taken
                await self._send(producer, tp, batch, taken, stamps)
                queue.inflight = []
        except BaseException as exc:
            # Cancelled (or a bug): nobody may wait forever on a record this task owned.
            message = f"append to {_name(tp)} failed: {exc!r}"
            _fail(queue.inflight, AppendOutcomeUnknown, message, exc)
            _fail(queue.queued, LogUnavailable, message, exc)
            queue.inflight, queue.queued = [], []
            if not isinstance(exc, Exception):
                raise
            log.exception("flushing appends to %s failed", _name(tp))
        finally:
            queue.flusher = None

    @staticmethod
    async def _send(
        producer: Any, tp: Any, batch: Any, taken: list[_Pending], stamps: list[int]
    ) -> None:
        """Hand one batch to aiokafka and settle its appends with the outcome."""
        try:
            sent = await producer.send_batch(batch, tp.topic, partition=tp.partition)
        except _TOO_LARGE as exc:
            _fail(taken, RecordTooLarge, str(exc), exc)
            return
        except kafka_errors.KafkaError as exc:
            # The batch never reached the accumulator: nothing of it can have been sent.
            _fail(taken, LogUnavailable, f"append to {_name(tp)} failed: {exc}", exc)
            return
        # The batch may be on the wire from here on. Each append's own deadline is enforced
        # by the watchdog; this wait is not cancelled, as that would not recall the batch.
        try:
            meta = await sent
        except _TOO_LARGE as exc:
            # The broker rejected the batch as a whole: nothing of it was written.
            _fail(taken, RecordTooLarge, str(exc), exc)
            return
        except kafka_errors.KafkaError as exc:
            _fail(taken, AppendOutcomeUnknown, f"append to {_name(tp)} failed: {exc}", exc)
            return
        base, ts = int(meta.offset), int(meta.timestamp)
        if base < 0:
            # DuplicateSequenceNumber: written before, but the broker no longer knows where.
            message = f"append to {_name(tp)} acknowledged without an offset"
            _fail(taken, AppendOutcomeUnknown, message, None)
            return
        partition = int(tp.partition)
        # -1: the topic keeps CreateTime, so each record's own (client) timestamp is its time.
        for i, item in enumerate(taken):
            fut = item[0]
            if not fut.done():
                fut.set_result(AppendResult(partition, base + i, ts if ts != -1 else stamps[i]))

    def _expire_overdue(self) -> None:
        """Fail appends whose ``timeout_ms`` passed; re-arm for the next deadline.

        One timer for all appends instead of one per call (as in the embedded log). An append
        still queued was never handed to aiokafka (``LogUnavailable``); one in the batch on
        the wire may still be written (``AppendOutcomeUnknown``).
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        upcoming: float | None = None
        for queue in self._queues.values():
            for entries, unsent in ((queue.queued, True), (queue.inflight, False)):
                for fut, _key, _value, _headers, deadline in entries:
                    if fut.done():
                        continue
                    if deadline > now:
                        if upcoming is None or deadline < upcoming:
                            upcoming = deadline
                    elif unsent:
                        fut.set_exception(
                            LogUnavailable(f"append to {_name(queue.tp)} could not be sent in time")
                        )
                    else:
                        fut.set_exception(
                            AppendOutcomeUnknown(
                                f"append to {_name(queue.tp)} not acknowledged in time"
                            )
                        )
        if upcoming is not None:
            self._watchdog.arm(loop, max(upcoming, now + _WATCHDOG_SLACK_S))

    @staticmethod
    async def _leader_reachable(producer: Any, tp: Any) -> None:
        # With a dead broker aiokafka would queue the batch and retry until the request
        # timeout, which callers can only read as "outcome unknown". Checking the leader's
        # connection first (a dict lookup while connected) turns the common "broker down"
        # case into a definite LogUnavailable.
        leader = producer.client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            return  # stale metadata: send_batch() refreshes it and fails or succeeds on its own
        try:
            reachable = await producer.client.ready(leader)
        except (kafka_errors.KafkaError, OSError) as exc:
            raise LogUnavailable(f"Kafka broker {leader} (leader of {_name(tp)}): {exc}") from exc
        if not reachable:
            raise LogUnavailable(f"Kafka broker {leader} (leader of {_name(tp)}) unreachable")

    # -- offsets and truncation ----------------------------------------------------------

    async def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        offsets = self._require(self._offsets)
        tp = await self._topic_partition(topic, partition)
        async with self._translate(f"bounds of {topic}[{partition}]"):
            starts, ends = await asyncio.gather(
                offsets.beginning_offsets([tp]), offsets.end_offsets([tp])
            )
        return int(starts[tp]), int(ends[tp])

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        offsets = self._require(self._offsets)
        tp = await self._topic_partition(topic, partition)
        async with self._translate(f"offset for time in {topic}[{partition}]"):
            found = await offsets.offsets_for_times({tp: max(0, ts_ms)})
        hit = found.get(tp)
        return None if hit is None else int(hit.offset)

    async def delete_records(self, topic: str, partition: int, before_offset: int) -> int:
        admin = self._require(self._admin)
        tp = await self._topic_partition(topic, partition)
        try:
            async with self._translate(f"delete records of {topic}[{partition}]"):
                low = await admin.delete_records({tp: RecordsToDelete(before_offset)})
        except OffsetOutOfRange:
            start, end = await self.bounds(topic, partition)
            raise OffsetOutOfRange(
                start, end, f"cannot delete {topic}[{partition}] before {before_offset}: end={end}"
            ) from None
        return int(low[tp])

    # -- reading -------------------------------------------------------------------------

    def reader(self, topic: str, positions: Mapping[int, int]) -> KafkaReader:
        self._require(self._producer)
        reader = KafkaReader(self, topic, positions)
        self._readers.add(reader)
        return reader

    def _reader_consumer(self) -> Any:
        return AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            request_timeout_ms=self._request_timeout_ms,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # "none": a position below the log start must fail loudly (truncation detection,
            # §7.5) instead of silently jumping to another offset.
            auto_offset_reset="none",
            fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
            fetch_min_bytes=1,
            max_partition_fetch_bytes=_MAX_PARTITION_FETCH_BYTES,
        )

    def _forget_reader(self, reader: KafkaReader) -> None:
        self._readers.discard(reader)

    # -- errors --------------------------------------------------------------------------

    @asynccontextmanager
    async def _translate(self, what: str) -> AsyncIterator[None]:
        """Map aiokafka errors of a non-append operation onto the ``sockudo.errors`` tree."""
        try:
            yield
        except kafka_errors.UnknownTopicOrPartitionError as exc:
            raise UnknownTopic(f"{what}: unknown topic or partition") from exc
        except kafka_errors.OffsetOutOfRangeError as exc:
            raise OffsetOutOfRange(-1, -1, f"{what}: offset out of range") from exc
        except kafka_errors.KafkaError as exc:
            _raise_log_error(what, exc)
        except (OSError, TimeoutError) as exc:
            raise LogUnavailable(f"{what}: {exc!r}") from exc


def _raise_log_error(what: str, exc: Exception) -> NoReturn:
    retriable = bool(getattr(exc, "retriable", False))
    if retriable or isinstance(
        exc, kafka_errors.KafkaTimeoutError | kafka_errors.KafkaConnectionError
    ):
        raise LogUnavailable(f"{what}: {exc}") from exc
    raise LogError(f"{what}: {exc}") from exc


class KafkaReader:
    """A ``LogReader`` over one topic: an unassigned-group consumer with manual positions.

    The consumer starts lazily on the first ``poll``/``seek`` because ``EventLog.reader`` is
    synchronous. Positions are tracked here (next offset to return per partition) so that
    ``position()`` stays synchronous as the protocol requires.
    """

    def __init__(self, log: KafkaLog, topic: str, positions: Mapping[int, int]) -> None:
        self._log = log
        self._topic = topic
        self._positions: dict[int, int] = dict(positions)
        self._consumer: Any = None
        self._closed = False

    async def _started(self) -> Any:
        if self._closed:
            raise LogUnavailable("reader is closed")
        if self._consumer is None:
            for partition in self._positions:
                await self._log._topic_partition(self._topic, partition)
            consumer = self._log._reader_consumer()
            try:
                await consumer.start()
            except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
                await consumer.stop()
                raise LogUnavailable(f"reader for {self._topic} cannot connect: {exc}") from exc
            self._consumer = consumer
            self._assign()
        return self._consumer

    def _assign(self) -> None:
        # assign() forgets every position, so re-seek all partitions we track afterwards.
        tps = [TopicPartition(self._topic, p) for p in sorted(self._positions)]
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, self._positions[tp.partition])

    async def poll(self, max_records: int, timeout_ms: int) -> list[LogRecord]:
        consumer = await self._started()
        if not self._positions:
            await asyncio.sleep(timeout_ms / 1000)
            return []
        try:
            batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except kafka_errors.OffsetOutOfRangeError as exc:
            await self._raise_out_of_range(exc)
        except kafka_errors.KafkaError as exc:
            _raise_log_error(f"poll {self._topic}", exc)
        records: list[LogRecord] = []
        for tp in sorted(batches, key=lambda t: int(t.partition)):
            for msg in batches[tp]:
                records.append(
                    LogRecord(
                        topic=self._topic,
                        partition=int(msg.partition),
                        offset=int(msg.offset),
                        timestamp_ms=int(msg.timestamp),
                        key=msg.key,
                        value=msg.value,
                        headers=tuple(
                            (str(name), bytes(val) if val is not None else b"")
                            for name, val in msg.headers
                        ),
                    )
                )
            if batches[tp]:
                self._positions[int(tp.partition)] = int(batches[tp][-1].offset) + 1
        return records

    async def _raise_out_of_range(self, exc: Exception) -> NoReturn:
        positions = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        partition, offset = next(
            ((int(tp.partition), int(off)) for tp, off in positions.items()),
            (min(self._positions), -1),
        )
        start, end = await self._log.bounds(self._topic, partition)
        raise OffsetOutOfRange(
            start,
            end,
            f"{self._topic}[{partition}] offset {offset} out of range: log_start={start} end={end}",
        ) from exc

    def position(self, partition: int) -> int:
        return self._positions[partition]

    async def seek(self, partition: int, offset: int) -> None:
        if self._consumer is None:
            self._positions[partition] = offset
            await self._started()
            return
        await self._log._topic_partition(self._topic, partition)
        new = partition not in self._positions
        self._positions[partition] = offset
        if new:
            self._assign()
        else:
            self._consumer.seek(TopicPartition(self._topic, partition), offset)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._log._forget_reader(self)
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await _bounded_stop(consumer.stop(), "AIOKafkaConsumer")
