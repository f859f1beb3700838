"""The key-value surface folds write through, with an in-memory twin and a batch overlay.

Folds read and write typed state through :class:`KV`. The projector gives them an
:class:`Overlay` over the RocksDB store, so records later in a batch see earlier effects while
every change lands in one atomic write; unit tests give them a :class:`MemoryKV`.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator
from itertools import islice
from typing import Protocol


class KVReader(Protocol):
    """Read access to column families of byte keys and values."""

    def get(self, cf: str, key: bytes) -> bytes | None: ...

    def scan(
        self, cf: str, start: bytes, end: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with ``start <= key < end`` in key order (descending when ``reverse``)."""
        ...

    def scan_window(
        self, cf: str, start: bytes, end: bytes, count: int
    ) -> list[tuple[bytes, bytes]]:
        """The first ``count`` pairs of :meth:`scan` (ascending), as a list."""
        ...


class KV(KVReader, Protocol):
    """Read-write access; writes become visible to later reads immediately."""

    def put(self, cf: str, key: bytes, value: bytes) -> None: ...

    def delete(self, cf: str, key: bytes) -> None: ...


class MemoryKV:
    """A sorted in-memory KV: the store of unit tests and of ``inspect-stream`` recomputation."""

    def __init__(self) -> None:
        self._data: dict[str, dict[bytes, bytes]] = {}
        self._keys: dict[str, list[bytes]] = {}

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self._data.get(cf, {}).get(key)

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        data = self._data.setdefault(cf, {})
        if key not in data:
            bisect.insort(self._keys.setdefault(cf, []), key)
        data[key] = value

    def delete(self, cf: str, key: bytes) -> None:
        data = self._data.get(cf)
        if data is not None and key in data:
            del data[key]
            keys = self._keys[cf]
            del keys[bisect.bisect_left(keys, key)]

    def scan(
        self, cf: str, start: bytes, end: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        keys = self._keys.get(cf, [])
        lo = bisect.bisect_left(keys, start)
        hi = bisect.bisect_left(keys, end)
        selected = keys[lo:hi]
        data = self._data[cf] if selected else {}
        for k in reversed(selected) if reverse else selected:
            yield k, data[k]

    def scan_window(
        self, cf: str, start: bytes, end: bytes, count: int
    ) -> list[tuple[bytes, bytes]]:
        return list(islice(self.scan(cf, start, end), count))

    def items(self, cf: str) -> Iterator[tuple[bytes, bytes]]:
        for k in self._keys.get(cf, []):
            yield k, self._data[cf][k]


_DELETED = None


class Overlay:
    """Pending writes on top of a base reader; ``changes()`` hands them to one atomic batch."""

    def __init__(self, base: KVReader) -> None:
        self._base = base
        self._pending: dict[str, dict[bytes, bytes | None]] = {}

    def get(self, cf: str, key: bytes) -> bytes | None:
        pending = self._pending.get(cf)
        if pending is not None and key in pending:
            return pending[key]
        return self._base.get(cf, key)

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        pending = self._pending.get(cf)
        if pending is None:
            pending = self._pending[cf] = {}
        pending[key] = value

    def delete(self, cf: str, key: bytes) -> None:
        pending = self._pending.get(cf)
        if pending is None:
            pending = self._pending[cf] = {}
        pending[key] = _DELETED

    def scan(
        self, cf: str, start: bytes, end: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        pending = self._pending.get(cf)
        base = self._base.scan(cf, start, end, reverse=reverse)
        if not pending:
            yield from base
            return
        mine = sorted(((k, v) for k, v in pending.items() if start <= k < end), reverse=reverse)
        # Merge two sorted streams; on equal keys the pending write wins (tag 0 sorts first).
        tagged_base = ((k, 1, v) for k, v in base)
        tagged_mine = ((k, 0, v) for k, v in mine)
        if reverse:
            merged = heapq.merge(tagged_mine, tagged_base, key=lambda t: (_neg(t[0]), t[1]))
        else:
            merged = heapq.merge(tagged_mine, tagged_base, key=lambda t: (t[0], t[1]))
        last: bytes | None = None
        for k, _tag, v in merged:
            if k == last:
                continue
            last = k
            if v is not None:
                yield k, v

    def scan_window(
        self, cf: str, start: bytes, end: bytes, count: int
    ) -> list[tuple[bytes, bytes]]:
        if not self._pending.get(cf):
            return self._base.scan_window(cf, start, end, count)
        return list(islice(self.scan(cf, start, end), count))

    def changes(self) -> dict[str, dict[bytes, bytes | None]]:
        """Pending writes per column family (``None`` = delete)."""
        return self._pending

    def clear(self) -> None:
        self._pending = {}


class _neg:
    """Reverses byte ordering for heapq.merge on descending scans."""

    __slots__ = ("b",)

    def __init__(self, b: bytes) -> None:
        self.b = b

    def __lt__(self, other: _neg) -> bool:
        return self.b > other.b

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _neg) and self.b == other.b

    def __hash__(self) -> int:
        return hash(self.b)
