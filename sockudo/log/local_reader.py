"""What the two in-process logs (embedded, memory) share, mostly their readers.

The logs share topic and partition lookups (:class:`LocalTopics`) and the waking of parked
readers (:class:`WakesReaders`). Their readers keep explicit positions, take partitions in
turns so one busy partition cannot starve the others, refuse a position outside
``[log start, end]`` as Kafka does with ``auto_offset_reset="none"``, and park at the end of
every partition on the topic's waiter list until the next append (memory) or commit
(embedded) wakes them. Only how records are taken differs: each log's reader implements
:meth:`LocalReader._read`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from sockudo.errors import LogUnavailable, OffsetOutOfRange, UnknownTopic
from sockudo.log.base import LogRecord, check_partition


class _Part(Protocol):
    start: int
    end: int


class LocalTopic(Protocol):
    """A topic of an in-process log, as its readers see it."""

    @property
    def parts(self) -> Sequence[_Part]: ...
    @property
    def waiters(self) -> list[asyncio.Future[None]]: ...


class WakesReaders:
    """A topic whose readers park on ``waiters`` at the end of every partition."""

    __slots__ = ()  # the topics are slotted dataclasses; a slot-less base would add a __dict__
    waiters: list[asyncio.Future[None]]

    def wake_readers(self) -> None:
        waiters = self.waiters[:]
        self.waiters.clear()
        for fut in waiters:
            _resolve(fut)


_P = TypeVar("_P")
_P_co = TypeVar("_P_co", covariant=True)


class _HasParts(Protocol[_P_co]):
    @property
    def parts(self) -> Sequence[_P_co]: ...


_T = TypeVar("_T", bound=_HasParts[Any])


class LocalTopics(Generic[_T, _P]):
    """Topic and partition lookups of a log that keeps its topics in ``_topics``."""

    _topics: dict[str, _T]

    def _require_open(self) -> object:
        raise NotImplementedError

    def _topic(self, name: str) -> _T:
        self._require_open()
        topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopic(f"topic {name} does not exist")
        return topic

    def _partition(self, topic: str, partition: int) -> _P:
        parts: Sequence[_P] = self._topic(topic).parts
        check_partition(topic, len(parts), partition)
        return parts[partition]


class LocalReader:
    """Positions, turns, range checks and the wait at the end; subclasses read records."""

    def __init__(
        self, log: LocalTopics[Any, Any], topic: str, positions: Mapping[int, int]
    ) -> None:
        self._log = log
        self._topic_name = topic
        self._positions: dict[int, int] = dict(positions)
        self._rotation = 0
        self._closed = False

    async def _read(self, t: Any, order: list[int], max_records: int) -> list[LogRecord] | None:
        """Records from the partitions of ``order`` (each checked in range, in turn order).

        ``None`` when positions moved without a record to return (look again at once).
        """
        raise NotImplementedError

    def _topic(self) -> Any:
        if self._closed:
            raise LogUnavailable("reader is closed")
        t = self._log._topic(self._topic_name)
        for p in self._positions:
            check_partition(self._topic_name, len(t.parts), p)
        return t

    def _turn(self, t: LocalTopic) -> list[int]:
        """Every partition, starting at a rotating index, once each position is in range."""
        order = sorted(self._positions)
        if not order:
            return []
        k = self._rotation % len(order)
        self._rotation += 1
        order = order[k:] + order[:k]
        for p in order:
            part, position = t.parts[p], self._positions[p]
            if position < part.start or position > part.end:
                raise OffsetOutOfRange(
                    part.start,
                    part.end,
                    f"{self._topic_name}[{p}] offset {position} out of range: "
                    f"log_start={part.start} end={part.end}",
                )
        return order

    async def poll(self, max_records: int, timeout_ms: int) -> list[LogRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            t = self._topic()
            records = await self._read(t, self._turn(t), max(1, max_records))
            if records:
                return records
            if records is None:
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            waiter: asyncio.Future[None] = loop.create_future()
            t.waiters.append(waiter)
            timer = loop.call_later(remaining, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                if waiter in t.waiters:
                    t.waiters.remove(waiter)

    def position(self, partition: int) -> int:
        return self._positions[partition]

    async def seek(self, partition: int, offset: int) -> None:
        if self._closed:
            raise LogUnavailable("reader is closed")
        self._log._partition(self._topic_name, partition)
        self._positions[partition] = offset

    async def close(self) -> None:
        self._closed = True


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
