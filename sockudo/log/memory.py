"""The in-memory twin of the event log: the same contract (spec 05 §8.2), no durability.

For unit tests and tools that need a log without a disk. It passes the shared contract suite
in ``tests/contract/test_log_contract.py``, so code tested against it behaves the same on the
embedded and Kafka backends. ``append`` is acknowledged as soon as the record is stored.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sockudo.errors import LogError, LogUnavailable, OffsetOutOfRange
from sockudo.log.base import (
    MAX_RECORD_BYTES,
    AppendResult,
    LogRecord,
    TopicSpec,
    check_existing_topic,
    check_record_size,
    cleanup_policies,
    wall_clock_ms,
)
from sockudo.log.local_reader import LocalReader, LocalTopics, WakesReaders

__all__ = ["MemoryLog", "MemoryReader"]

_DEFAULT_DELETE_RETENTION_MS = 86_400_000


@dataclass(slots=True)
class _Partition:
    """Records of one partition in offset order, with parallel lists for binary search."""

    start: int = 0
    end: int = 0
    last_ts: int = 0
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    """Non-decreasing, so ``bisect`` finds the first record at or after a time."""
    records: list[LogRecord] = field(default_factory=list)

    def keep(self, indices: Sequence[int]) -> None:
        self.offsets = [self.offsets[i] for i in indices]
        self.timestamps = [self.timestamps[i] for i in indices]
        self.records = [self.records[i] for i in indices]


@dataclass(eq=False, slots=True)
class _Topic(WakesReaders):
    spec: TopicSpec
    parts: list[_Partition]
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    """Readers parked at the end of every partition, woken by the next append."""


class MemoryLog(LocalTopics[_Topic, _Partition]):
    """An ``EventLog`` whose records live in lists; nothing survives the process.

    Compacted topics are compacted only when ``compact`` is called, with the embedded log's
    rules: newest record per key kept, offsets unchanged.
    """

    def __init__(
        self,
        *,
        max_record_bytes: int = MAX_RECORD_BYTES,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._topics: dict[str, _Topic] = {}
        self._max = max_record_bytes
        self._clock = clock
        self._open = False
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise LogUnavailable("memory log is closed")
        self._open = True

    async def close(self) -> None:
        self._open = False
        self._closed = True
        for t in self._topics.values():
            t.wake_readers()

    def _require_open(self) -> None:
        if not self._open:
            raise LogUnavailable("memory log is not started (or already closed)")

    @property
    def shared(self) -> bool:
        return True  # in-process nodes may share one (tests of the cluster do)

    @property
    def failure(self) -> BaseException | None:
        return None  # memory does not fail

    async def ensure_topic(self, name: str, partitions: int, config: Mapping[str, str]) -> None:
        self._require_open()
        if partitions < 1:
            raise LogError(f"topic {name}: partitions must be >= 1, not {partitions}")
        existing = self._topics.get(name)
        if existing is None:
            spec = TopicSpec(name, partitions, dict(config))
            self._topics[name] = _Topic(spec, [_Partition() for _ in range(partitions)])
            return
        actual = existing.spec
        check_existing_topic(name, partitions, config, actual.partitions, actual.cleanup_policy)

    async def partitions(self, topic: str) -> int:
        return len(self._topic(topic).parts)

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
        p = self._partition(topic, partition)
        check_record_size(key, value, headers, self._max)
        ts = max(p.last_ts, self._clock())
        offset = p.end
        record = LogRecord(topic, partition, offset, ts, key, value, tuple(headers))
        p.offsets.append(offset)
        p.timestamps.append(ts)
        p.records.append(record)
        p.end = offset + 1
        p.last_ts = ts
        self._topics[topic].wake_readers()
        return AppendResult(partition, offset, ts)

    async def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        p = self._partition(topic, partition)
        return p.start, p.end

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        p = self._partition(topic, partition)
        i = bisect.bisect_left(p.timestamps, ts_ms)
        return p.offsets[i] if i < len(p.offsets) else None

    async def delete_records(self, topic: str, partition: int, before_offset: int) -> int:
        p = self._partition(topic, partition)
        if before_offset > p.end or before_offset < 0:
            raise OffsetOutOfRange(
                p.start,
                p.end,
                f"cannot delete {topic}[{partition}] before {before_offset}: "
                f"log_start={p.start} end={p.end}",
            )
        if before_offset > p.start:
            cut = bisect.bisect_left(p.offsets, before_offset)
            p.keep(range(cut, len(p.offsets)))
            p.start = before_offset
        return p.start

    async def compact(self, topic: str, *, now_ms: int | None = None) -> int:
        """Compact a ``cleanup.policy=compact`` topic like ``EmbeddedLog.compact``."""
        t = self._topic(topic)
        if "compact" not in cleanup_policies(t.spec.cleanup_policy):
            return 0
        now = self._clock() if now_ms is None else now_ms
        lag_cutoff = now - int(t.spec.config.get("min.compaction.lag.ms", "0"))
        tombstone_cutoff = now - int(
            t.spec.config.get("delete.retention.ms", _DEFAULT_DELETE_RETENTION_MS)
        )
        removed = 0
        for p in t.parts:
            newest = {r.key: i for i, r in enumerate(p.records) if r.key is not None}
            last = len(p.records) - 1
            kept = []
            for i, r in enumerate(p.records):
                if r.key is None or i == last:
                    drop = False
                elif newest[r.key] != i:
                    drop = r.timestamp_ms <= lag_cutoff
                else:
                    drop = r.value is None and r.timestamp_ms <= tombstone_cutoff
                if not drop:
                    kept.append(i)
            removed += len(p.records) - len(kept)
            p.keep(kept)
        return removed

    def reader(self, topic: str, positions: Mapping[int, int]) -> MemoryReader:
        """A reader; unknown topics and partitions are reported by ``poll``/``seek``."""
        self._require_open()
        return MemoryReader(self, topic, positions)


class MemoryReader(LocalReader):
    """Reads a ``MemoryLog`` topic from explicit positions, waiting at the end."""

    async def _read(self, t: _Topic, order: list[int], max_records: int) -> list[LogRecord] | None:
        out: list[LogRecord] = []
        for p in order:
            budget = max_records - len(out)
            if budget <= 0:
                break
            part = t.parts[p]
            i = bisect.bisect_left(part.offsets, self._positions[p])
            taken = part.records[i : i + budget]
            out += taken
            self._positions[p] = taken[-1].offset + 1 if len(taken) == budget else part.end
        return out
