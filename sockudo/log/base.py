"""The append-only log contract (spec 05 §8.2) shared by every backend.

Every backend (memory, embedded RocksDB, Kafka) passes the same contract suite in
``tests/contract/test_log_contract.py``. The log is the only way state changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sockudo.errors import (
    AppendOutcomeUnknown,
    LogError,
    LogUnavailable,
    OffsetOutOfRange,
    RecordTooLarge,
    TopicMismatch,
    UnknownTopic,
)

__all__ = [
    "MAX_RECORD_BYTES",
    "AppendOutcomeUnknown",
    "AppendResult",
    "EventLog",
    "LogError",
    "LogReader",
    "LogRecord",
    "LogUnavailable",
    "OffsetOutOfRange",
    "RecordTooLarge",
    "TopicMismatch",
    "TopicSpec",
    "UnknownTopic",
]

MAX_RECORD_BYTES = 1_048_576
"""Largest value a backend accepts (`max.message.bytes` on Kafka, `max_record_bytes` embedded)."""

Headers = Sequence[tuple[str, bytes]]


def wall_clock_ms() -> int:
    """The default clock of the local backends (record times are log-append times)."""
    return time.time_ns() // 1_000_000


def cleanup_policies(value: str) -> frozenset[str]:
    """``cleanup.policy`` as a set: ``"compact,delete"`` equals ``"delete,compact"``."""
    return frozenset(p.strip() for p in value.split(",") if p.strip())


def check_existing_topic(
    name: str,
    partitions: int,
    config: Mapping[str, str],
    actual_partitions: int,
    actual_policy: str | None,
) -> None:
    """``ensure_topic`` of a topic that exists: it must have the partitions and cleanup policy
    asked for (``actual_policy`` ``None``: not known, not checked)."""
    if actual_partitions != partitions:
        raise TopicMismatch(
            f"topic {name}: expected {partitions} partitions, actual {actual_partitions} partitions"
        )
    expected_policy = config.get("cleanup.policy", "delete")
    if actual_policy is not None and cleanup_policies(actual_policy) != cleanup_policies(
        expected_policy
    ):
        raise TopicMismatch(
            f"topic {name}: expected cleanup.policy={expected_policy}, "
            f"actual cleanup.policy={actual_policy}"
        )


def check_partition(topic: str, count: int, partition: int) -> None:
    """Raise ``UnknownTopic`` unless ``partition`` is one of the topic's ``count``."""
    if not 0 <= partition < count:
        raise UnknownTopic(f"topic {topic} has {count} partitions, no partition {partition}")


def check_record_size(key: bytes | None, value: bytes | None, headers: Headers, limit: int) -> None:
    """A local backend's record limit: key, value and headers (names and values) together."""
    size = (0 if key is None else len(key)) + (0 if value is None else len(value))
    for name, raw in headers:
        size += len(name) + len(raw)
    if size > limit:
        raise RecordTooLarge(f"record of {size} bytes exceeds the limit of {limit} bytes")


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an acknowledged record landed."""

    partition: int
    """Partition the record was written to."""
    offset: int
    """Offset the record got (0-based, increasing per partition)."""
    timestamp_ms: int
    """Log-append time of the record (non-decreasing per partition)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record read back from the log."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    """Log-append time; the fold uses it as "now"."""
    key: bytes | None
    value: bytes | None
    """``None`` is a tombstone (compacted topics only)."""
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic the node needs: its full name, partition count and config."""

    name: str
    partitions: int
    config: Mapping[str, str]

    @property
    def cleanup_policy(self) -> str:
        return self.config.get("cleanup.policy", "delete")


@runtime_checkable
class LogReader(Protocol):
    """Reads records of one topic from explicit per-partition positions."""

    async def poll(self, max_records: int, timeout_ms: int) -> list[LogRecord]:
        """Return up to ``max_records`` records in offset order per partition.

        Waits up to ``timeout_ms`` when every assigned partition is at its end, returning as
        soon as a record arrives; returns ``[]`` on timeout. Raises ``OffsetOutOfRange`` when a
        position is below the partition's log start (records were deleted before being read).
        """
        ...

    def position(self, partition: int) -> int:
        """The next offset this reader will return for ``partition``."""
        ...

    async def seek(self, partition: int, offset: int) -> None:
        """Move the position of ``partition`` (assigning it if needed)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class EventLog(Protocol):
    """A partitioned, append-only, durable log of records."""

    async def start(self) -> None:
        """Open connections / files. Must be called before any other method."""
        ...

    async def close(self) -> None:
        """Flush what was acknowledged and release resources."""
        ...

    @property
    def shared(self) -> bool:
        """Whether other nodes append to this log too (and may declare this one dead)."""
        ...

    @property
    def failure(self) -> BaseException | None:
        """What stopped this log for good in this process, or ``None``.

        Such a log refuses appends until it is opened again (the embedded log after a failed
        write). An unreachable broker is not one: that passes.
        """
        ...

    async def ensure_topic(self, name: str, partitions: int, config: Mapping[str, str]) -> None:
        """Create the topic if absent. Idempotent.

        Raises ``TopicMismatch`` when it exists with another partition count or cleanup policy.
        """
        ...

    async def partitions(self, topic: str) -> int:
        """Partition count of ``topic``; ``UnknownTopic`` if it does not exist."""
        ...

    async def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        *,
        timeout_ms: int,
    ) -> AppendResult:
        """Append one record and return only once it is durable.

        Raises ``RecordTooLarge`` (nothing written), ``LogUnavailable`` (nothing written) or
        ``AppendOutcomeUnknown`` (may have been written). Concurrent appends are batched by the
        backend; appends to one partition from one task keep call order.
        """
        ...

    async def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        """``(log_start, end)``: the first readable offset and the next offset to be written."""
        ...

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        """First offset whose timestamp is ``>= ts_ms``, or ``None`` past the end."""
        ...

    async def delete_records(self, topic: str, partition: int, before_offset: int) -> int:
        """Move the log start to ``before_offset`` (retention); returns the new log start."""
        ...

    def reader(self, topic: str, positions: Mapping[int, int]) -> LogReader:
        """A reader over the given partitions, starting at the given offsets."""
        ...


class Watchdog:
    """One event-loop timer for the append timeouts of a whole log.

    A timer per append cost more than framing the record, so the log keeps one timer at the
    earliest pending deadline; its callback fails what is overdue and re-arms for the next.
    """

    __slots__ = ("_callback", "_handle")

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Fire by ``deadline`` (loop time) at the latest."""
        handle = self._handle
        if handle is not None:
            if handle.when() <= deadline:
                return
            handle.cancel()
        self._handle = loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._callback()
