"""In-memory twin of the log: same contract, no durability; for fast tests and tools."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sockudo.errors import (
    LogUnavailable,
    OffsetOutOfRange,
    RecordTooLarge,
    TopicMismatch,
    UnknownTopic,
)
from sockudo.log.base import MAX_RECORD_BYTES, AppendResult, LogRecord, TopicSpec


@dataclass(slots=True)
class _Partition:
    start: int = 0
    end: int = 0
    records: dict[int, LogRecord] = field(default_factory=dict)
    timestamps: list[tuple[int, int]] = field(default_factory=list)
    """(timestamp, offset) in offset order; timestamps never decrease."""


@dataclass(slots=True)
class _Topic:
    spec: TopicSpec
    parts: list[_Partition]
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryLog:
    """Records live in dicts; ``append`` is acknowledged immediately."""

    def __init__(self, *, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self._topics: dict[str, _Topic] = {}
        self._max = max_record_bytes
        self._open = False

    async def start(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        for t in self._topics.values():
            t.changed.set()

    def _topic(self, name: str) -> _Topic:
        if not self._open:
            raise LogUnavailable("memory log is closed")
        t = self._topics.get(name)
        if t is None:
            raise UnknownTopic(f"topic {name} does not exist")
        return t

    def _partition(self, topic: str, partition: int) -> _Partition:
        t = self._topic(topic)
        if not 0 <= partition < len(t.parts):
            raise UnknownTopic(f"topic {topic} has no partition {partition}")
        return t.parts[partition]

    async def ensure_topic(self, name: str, partitions: int, config: Mapping[str, str]) -> None:
        spec = TopicSpec(name, partitions, dict(config))
        existing = self._topics.get(name)
        if existing is None:
            self._topics[name] = _Topic(spec, [_Partition() for _ in range(partitions)])
            return
        if existing.spec.partitions != partitions:
            raise TopicMismatch(
                f"topic {name}: expected {partitions} partitions, found {existing.spec.partitions}"
            )
        if existing.spec.cleanup_policy != spec.cleanup_policy:
            raise TopicMismatch(
                f"topic {name}: expected cleanup.policy={spec.cleanup_policy}, "
                f"found {existing.spec.cleanup_policy}"
            )

    async def partitions(self, topic: str) -> int:
        return self._topic(topic).spec.partitions

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
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > self._max:
            raise RecordTooLarge(f"record of {size} bytes exceeds {self._max}")
        last_ts = p.timestamps[-1][0] if p.timestamps else 0
        ts = max(last_ts, int(time.time() * 1000))
        offset = p.end
        p.records[offset] = LogRecord(topic, partition, offset, ts, key, value, tuple(headers))
        p.timestamps.append((ts, offset))
        p.end += 1
        t = self._topics[topic]
        t.changed.set()
        t.changed = asyncio.Event()
        return AppendResult(partition, offset, ts)

    async def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        p = self._partition(topic, partition)
        return p.start, p.end

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        p = self._partition(topic, partition)
        i = bisect.bisect_left(p.timestamps, (ts_ms, -1))
        while i < len(p.timestamps) and p.timestamps[i][1] < p.start:
            i += 1
        return p.timestamps[i][1] if i < len(p.timestamps) else None

    async def delete_records(self, topic: str, partition: int, before_offset: int) -> int:
        p = self._partition(topic, partition)
        if before_offset > p.end:
            raise OffsetOutOfRange(p.start, p.end)
        for o in range(p.start, before_offset):
            p.records.pop(o, None)
        p.start = max(p.start, before_offset)
        return p.start

    def reader(self, topic: str, positions: Mapping[int, int]) -> MemoryReader:
        return MemoryReader(self, topic, positions)


class MemoryReader:
    """Reads a :class:`MemoryLog` topic from explicit positions, waiting at the end."""

    def __init__(self, log: MemoryLog, topic: str, positions: Mapping[int, int]) -> None:
        self._log = log
        self._topic = topic
        self._positions = dict(positions)

    async def poll(self, max_records: int, timeout_ms: int) -> list[LogRecord]:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            t = self._log._topic(self._topic)
            out: list[LogRecord] = []
            for p, pos in sorted(self._positions.items()):
                part = t.parts[p]
                if pos < part.start or pos > part.end:
                    raise OffsetOutOfRange(part.start, part.end)
                while pos < part.end and len(out) < max_records:
                    rec = part.records.get(pos)
                    if rec is not None:
                        out.append(rec)
                    pos += 1
                self._positions[p] = pos
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(t.changed.wait(), remaining)
            except TimeoutError:
                return []

    def position(self, partition: int) -> int:
        return self._positions[partition]

    async def seek(self, partition: int, offset: int) -> None:
        self._log._partition(self._topic, partition)
        self._positions[partition] = offset

    async def close(self) -> None:
        self._positions.clear()
