"""The projection database: one RocksDB per node, a column family per projection.

Every batch of folded records is written with its checkpoints in one ``WriteBatch``, so after a
crash the stored checkpoint names exactly the first record whose effects are missing
(spec 05 §7.3).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import cast

from rocksdict import (
    AccessType,
    Cache,
    Options,
    Rdict,
    RdictIter,
    WriteBatch,
    WriteOptions,
)

from projections.store import keys
from sockudo import rocksdb_budget
from sockudo.errors import ProjectionCorrupt, ProjectionUnavailable

_CKPT = struct.Struct(">QqI")

FOLD_VERSION = 8
"""Bump whenever fold output changes: a projection written by another version is rebuilt."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """First offset not yet applied, the last applied record's time, and who wrote it."""

    position: int
    last_timestamp_ms: int | None
    fold_version: int

    def encode(self) -> bytes:
        ts = -1 if self.last_timestamp_ms is None else self.last_timestamp_ms
        return _CKPT.pack(self.position, ts, self.fold_version)

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        position, ts, version = _CKPT.unpack(raw)
        return cls(position, None if ts < 0 else ts, version)


@dataclass(frozen=True, slots=True)
class Stall:
    """A partition this node stopped folding, and why (node-local, spec 05 §7.4)."""

    reason: str
    offset: int | None
    detail: str
    since_ms: int

    def encode(self) -> bytes:
        return json.dumps(
            {
                "reason": self.reason,
                "offset": self.offset,
                "detail": self.detail,
                "since_ms": self.since_ms,
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Stall:
        d = json.loads(raw)
        return cls(d["reason"], d["offset"], d["detail"], d["since_ms"])


_MEMTABLE_BLOOM_CFS = frozenset({keys.DEDUP, keys.IDEM, keys.DEAD_NODES})
"""Column families the fold probes once per record, and mostly for keys that are absent."""


def _cf_options(cache: Cache, name: str | None = None) -> Options:
    # Bloom filters: the fold's dedupe and idempotency lookups are mostly misses, which
    # otherwise probe every SST file.
    opts = Options(raw_mode=True)
    table = rocksdb_budget.table_options(cache)
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    if name in _MEMTABLE_BLOOM_CFS:
        # ... and the memtable: without a filter a miss walks the skip list (~2 µs with a
        # full memtable, a fifth of it with one). 2% of the write buffer is ~13 bits per key.
        opts.set_memtable_prefix_bloom_ratio(0.02)
        opts.set_memtable_whole_key_filtering(True)
    return opts


def _options(cache: Cache) -> Options:
    opts = rocksdb_budget.bounded(_cf_options(cache))
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    return opts


class ProjectionStore:
    """RocksDB-backed projection state; implements the read side of the fold's KV surface."""

    def __init__(
        self, path: str | os.PathLike[str], *, read_only: bool = False, bulk_load: bool = False
    ) -> None:
        """``bulk_load``: a database filled once from the log and only used after ``close``
        (``sockudo-tools rebuild``): writes skip the WAL and go in key order, and ``close``
        flushes the memtables. A crash midway leaves a directory the next rebuild deletes."""
        self.path = Path(path)
        self.read_only = read_only
        self.bulk_load = bulk_load and not read_only
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no projection database at {self.path}")
        try:
            if read_only:
                self._db = Rdict(
                    str(self.path), Options(raw_mode=True), access_type=AccessType.read_only()
                )
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                cache = rocksdb_budget.block_cache()
                cfs = {name: _cf_options(cache, name) for name in keys.COLUMN_FAMILIES}
                self._db = Rdict(str(self.path), _options(cache), column_families=cfs)
        except Exception as exc:  # rocksdict raises plain Exception (a lock held, corruption)
            raise ProjectionUnavailable(f"cannot open projection at {self.path}: {exc}") from None
        try:
            self._cfs = {name: self._db.get_column_family(name) for name in keys.COLUMN_FAMILIES}
            self._handles = {
                name: self._db.get_column_family_handle(name) for name in keys.COLUMN_FAMILIES
            }
        except Exception as exc:  # a read-only open of a database that is not a projection
            self._db.close()
            raise ProjectionUnavailable(
                f"{self.path} is not a projection database: {exc}"
            ) from None
        self._write_opts = WriteOptions()
        self._write_opts.sync = False
        if self.bulk_load:
            self._write_opts.disable_wal = True  # type: ignore[method-assign,assignment]

    # --- KVReader ---------------------------------------------------------------------------

    def get(self, cf: str, key: bytes) -> bytes | None:
        value = self._cfs[cf].get(key)
        return value if value is None else bytes(value)

    def scan(
        self, cf: str, start: bytes, end: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        return _scan(self._cfs[cf].iter(), start, end, reverse, cf, self.path)

    def scan_window(
        self, cf: str, start: bytes, end: bytes, count: int
    ) -> list[tuple[bytes, bytes]]:
        """The first ``count`` pairs from ``start`` below ``end``: rocksdict's item iterator
        read ``count`` times in C (``islice``), a third cheaper than a stepwise scan for a
        page of rows."""
        # Raw mode: keys and values are bytes.
        window = cast(
            list[tuple[bytes, bytes]], list(islice(self._cfs[cf].items(from_key=start), count))
        )
        if window and window[-1][0] >= end:
            window = [pair for pair in window if pair[0] < end]
        elif len(window) < count:
            # The item iterator ends quietly on a read error: make sure this was the end.
            it = self._cfs[cf].iter()
            if window:
                it.seek(window[-1][0])
                it.next()
            else:
                it.seek(start)
            if not it.valid():
                _ended(it, self.path, cf)
        return window

    def pin(self, cfs: Iterable[str]) -> PinnedView:
        """A view of ``cfs`` as they are now, readable later and from any thread.

        Call it on the thread that writes (the event loop): with no write between the
        iterators' creation, every column family shows the same committed batch.
        """
        return PinnedView({cf: self._cfs[cf].iter() for cf in cfs})

    # --- writes -----------------------------------------------------------------------------

    def write(
        self,
        changes: Mapping[str, Mapping[bytes, bytes | None]],
        meta: Mapping[bytes, bytes | None] | None = None,
    ) -> None:
        """Apply fold changes and their checkpoints atomically."""
        self.commit(self.batch(changes, meta))

    def batch(
        self,
        changes: Mapping[str, Mapping[bytes, bytes | None]],
        meta: Mapping[bytes, bytes | None] | None = None,
    ) -> WriteBatch:
        """The ``WriteBatch`` :meth:`write` commits (``bench/fold.py`` times the two apart)."""
        wb = WriteBatch(raw_mode=True)
        put, delete = wb.put, wb.delete
        for cf, pairs in changes.items():
            handle = self._handles[cf]
            # Bulk batches are large: inserting them in key order walks the memtable's skip
            # list with locality (a fifth less write time measured on 10 000-record batches).
            items = sorted(pairs.items()) if self.bulk_load else pairs.items()
            for k, v in items:
                if v is None:
                    delete(k, handle)
                else:
                    put(k, v, handle)
        if meta:
            handle = self._handles[keys.META]
            for k, v in meta.items():
                if v is None:
                    wb.delete(k, handle)
                else:
                    wb.put(k, v, handle)
        return wb

    def commit(self, batch: WriteBatch) -> None:
        """Write a :meth:`batch` atomically (rocksdict holds the GIL throughout)."""
        self._db.write(batch, self._write_opts)

    # --- meta -------------------------------------------------------------------------------

    def checkpoint(self, topic: str, partition: int) -> Checkpoint | None:
        raw = self.get(keys.META, keys.checkpoint_key(topic, partition))
        return Checkpoint.decode(raw) if raw is not None else None

    def stall(self, topic: str, partition: int) -> Stall | None:
        raw = self.get(keys.META, keys.stall_key(topic, partition))
        return Stall.decode(raw) if raw is not None else None

    def projection_info(self) -> dict[str, object] | None:
        raw = self.get(keys.META, b"projection")
        return json.loads(raw) if raw is not None else None

    def set_projection_info(self, info: dict[str, object]) -> None:
        self.write({}, {b"projection": json.dumps(info, sort_keys=True).encode()})

    def is_empty(self) -> bool:
        return all(next(iter(self._cfs[cf].keys()), None) is None for cf in keys.COLUMN_FAMILIES)

    # --- verification -----------------------------------------------------------------------

    def digests(self) -> dict[str, str]:
        """SHA-256 per column family (``meta`` excluded), iterated in key order."""
        out: dict[str, str] = {}
        for cf in keys.COLUMN_FAMILIES:
            if cf == keys.META:
                continue
            h = hashlib.sha256()
            n = 0
            it = self._cfs[cf].iter()
            it.seek_to_first()
            while it.valid():
                kb, vb = it.key(), it.value()
                h.update(struct.pack(">I", len(kb)) + kb + struct.pack(">I", len(vb)) + vb)
                n += 1
                it.next()
            _ended(it, self.path, cf)
            out[cf] = f"{h.hexdigest()}:{n}"
        return out

    def flush(self) -> None:
        if self.bulk_load:
            # No WAL: the memtables are the only copy. ``Rdict.flush`` covers only the default
            # column family, so flush each one.
            for cf in self._cfs.values():
                cf.flush(True)
        elif not self.read_only:
            self._db.flush_wal(True)

    def close(self) -> None:
        """Flush and release the database; it is released even when the flush fails."""
        try:
            self.flush()
        finally:
            # Column-family views hold the database open; drop them so the lock is released
            # now, not whenever the garbage collector gets to them.
            for cf in self._cfs.values():
                cf.close()
            self._cfs.clear()
            self._handles.clear()
            self._db.close()

    @staticmethod
    def destroy(path: str | os.PathLike[str]) -> None:
        shutil.rmtree(path, ignore_errors=True)


def _ended(it: RdictIter, path: Path | None, cf: str) -> None:
    """Raise :class:`ProjectionCorrupt` if ``it`` stopped on a read error rather than at the
    end of the data (RocksDB reports a bad block only through the iterator's status)."""
    try:
        it.status()
    except Exception as exc:  # rocksdict raises plain Exception
        where = f"projection at {path}" if path is not None else "projection"
        raise ProjectionCorrupt(
            f"{where} unreadable in {cf}: {exc}; rebuild it (sockudo-tools rebuild)"
        ) from None


def _scan(
    it: RdictIter, start: bytes, end: bytes, reverse: bool, cf: str = "", path: Path | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """The pairs of ``[start, end)``; a read error ends the scan with :class:`ProjectionCorrupt`
    instead of a short result."""
    if reverse:
        it.seek_for_prev(end)
        if it.valid() and it.key() >= end:
            it.prev()
        while it.valid():
            k = it.key()
            if k < start:
                return
            yield k, it.value()
            it.prev()
    else:
        it.seek(start)
        while it.valid():
            k = it.key()
            if k >= end:
                return
            yield k, it.value()
            it.next()
    _ended(it, path, cf)


class PinnedView:
    """A point-in-time :class:`~projections.store.kv.KVReader` over some column families.

    A RocksDB iterator reads the database as of its creation (its implicit snapshot) for as
    long as it lives, on whatever thread uses it; this view keeps one per column family and
    answers ``get`` and ``scan`` from it. (``Rdict.snapshot()`` exists, but rocksdict 0.3.29's
    ``Snapshot.iter`` sets the snapshot on a temporary read-options object and builds the
    iterator from fresh ones, so its iterators read the live database; only point reads honour
    it.) One scan or get at a time per column family; :meth:`close` releases the pinned
    memtables and files.
    """

    __slots__ = ("_busy", "_iters")

    def __init__(self, iters: dict[str, RdictIter]) -> None:
        self._iters = iters
        self._busy: set[str] = set()

    def _take(self, cf: str) -> RdictIter:
        if cf in self._busy:
            raise RuntimeError(f"column family {cf!r} is already being read in this view")
        try:
            return self._iters[cf]
        except KeyError:
            raise KeyError(f"column family {cf!r} is not pinned in this view") from None

    def get(self, cf: str, key: bytes) -> bytes | None:
        it = self._take(cf)
        it.seek(key)
        if not it.valid():
            _ended(it, None, cf)
            return None
        if it.key() == key:
            return bytes(it.value())
        return None

    def scan(
        self, cf: str, start: bytes, end: bytes, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        it = self._take(cf)
        self._busy.add(cf)
        try:
            yield from _scan(it, start, end, reverse, cf)
        finally:
            self._busy.discard(cf)

    def scan_window(
        self, cf: str, start: bytes, end: bytes, count: int
    ) -> list[tuple[bytes, bytes]]:
        return list(islice(self.scan(cf, start, end), count))

    def close(self) -> None:
        self._iters.clear()
