"""The embedded single-node event log: RocksDB through rocksdict (spec 05 §8.1).

Layout of the database (its own directory, never the projection DB):

- column family ``t:{topic}`` per topic; key = ``u32 partition ‖ u64 offset`` big-endian, so key
  order is (partition, offset) order and one partition is one contiguous key range;
- value = the record frame (all integers big-endian)::

      u8 format (1) ‖ i64 append_ts_ms ‖ u16 n_headers ‖ (u16 len, name, u32 len, value)* ‖
      i32 key_len (-1 = null) ‖ key ‖ i32 value_len (-1 = tombstone) ‖ value ‖
      u32 CRC-32 (zlib) of all previous bytes

- column family ``meta``: ``topic/{name}`` → JSON ``{"partitions": n, "config": {...}}`` and
  ``start/{topic}/{p}`` → u64 log start offset (absent = 0).

Durability: with ``fsync="always"`` (the default) ``append`` returns only after the record's
``WriteBatch`` was written and the write-ahead log synced to disk (``wal_sync.py`` syncs it
without holding the GIL, which rocksdict's ``sync=True`` write would). Appends are
group-committed: ``append`` assigns the offset and timestamp and adds the framed record to the
open batch; one writer task hands the whole batch to a dedicated thread for a single synced
write while the event loop keeps filling the next batch, then resolves every waiting append at
once. A synced write costs about as much for one record as for a thousand, so throughput grows
with the number of concurrent appenders instead of being capped at the disk's fsync rate.

rocksdict notes (0.3.29, seen in runs): a column family object or handle keeps the database and
its lock file alive until released, so ``close`` drops all of them; iterate bounds in
``ReadOptions`` are unreliable (a lower bound makes scans empty, a bound freed before its
iterator does too), so scans check their upper key themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rocksdict import (
    AccessType,
    Cache,
    ColumnFamily,
    DBRecoveryMode,
    Options,
    Rdict,
    RdictIter,
    WriteBatch,
    WriteOptions,
)

from sockudo import rocksdb_budget
from sockudo.errors import (
    AppendOutcomeUnknown,
    LogCorrupt,
    LogError,
    LogUnavailable,
    OffsetOutOfRange,
    RecordTooLarge,
    UnknownTopic,
)
from sockudo.fastclass import fast_constructor
from sockudo.log.base import (
    MAX_RECORD_BYTES,
    AppendResult,
    LogRecord,
    TopicSpec,
    Watchdog,
    check_existing_topic,
    check_partition,
    check_record_size,
    cleanup_policies,
    wall_clock_ms,
)
from sockudo.log.local_reader import LocalReader, LocalTopics, WakesReaders
from sockudo.log.wal_sync import WalSync

_new_record = fast_constructor(LogRecord)

__all__ = ["FRAME_FORMAT", "EmbeddedLog", "EmbeddedReader", "decode_frame", "encode_frame"]

log = logging.getLogger(__name__)

FRAME_FORMAT = 1
"""Version byte at the start of every stored frame."""

FSYNC_MODES = ("always", "interval", "never")

_KEY = struct.Struct(">IQ")
_HEAD = struct.Struct(">BqH")
_HEAD_KEY = struct.Struct(">BqHi")  # header without record headers, then the key length
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_NULL = _I32.pack(-1)
_MAX_OFFSET = (1 << 64) - 1
_META_CF = "meta"
_TOPIC_CF_PREFIX = "t:"
_DEFAULT_DELETE_RETENTION_MS = 86_400_000

_T = TypeVar("_T")


# -- frames -------------------------------------------------------------------------------


def encode_frame(
    timestamp_ms: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] = (),
) -> bytes:
    """The stored bytes of one record (layout in the module docstring)."""
    if not headers and key is not None and value is not None:
        # The common record (keyed, no headers) in one join: this runs once per append.
        head = _HEAD_KEY.pack(FRAME_FORMAT, timestamp_ms, 0, len(key))
        body = b"".join((head, key, _I32.pack(len(value)), value))
        return body + _U32.pack(zlib.crc32(body))
    parts = [_HEAD.pack(FRAME_FORMAT, timestamp_ms, len(headers))]
    for name, raw in headers:
        encoded = name.encode()
        parts += (_U16.pack(len(encoded)), encoded, _U32.pack(len(raw)), raw)
    parts += (_NULL,) if key is None else (_I32.pack(len(key)), key)
    parts += (_NULL,) if value is None else (_I32.pack(len(value)), value)
    body = b"".join(parts)
    return body + _U32.pack(zlib.crc32(body))


_HEADER_BLOCKS: dict[bytes, tuple[tuple[str, bytes], ...]] = {}
"""Decoded header sections by their bytes: a topic's records repeat a handful of them."""
_HEADER_BLOCKS_LIMIT = 1024


def _decode_headers(block: bytes, count: int) -> tuple[tuple[str, bytes], ...]:
    """The ``count`` headers that make up exactly ``block``."""
    headers: list[tuple[str, bytes]] = []
    pos = 0
    for _ in range(count):
        (n,) = _U16.unpack_from(block, pos)
        name = block[pos + 2 : pos + 2 + n].decode()
        pos += 2 + n
        (n,) = _U32.unpack_from(block, pos)
        headers.append((name, block[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    if pos != len(block):
        raise struct.error("header lengths run past the frame")
    return tuple(headers)


def decode_frame(
    frame: bytes,
) -> tuple[int, bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]:
    """``(timestamp_ms, key, value, headers)`` of a stored frame; ``LogError`` if corrupt."""
    size = len(frame)
    if size < _HEAD.size + 12:
        raise LogError(f"corrupt log record: frame of {size} bytes is too short")
    (crc,) = _U32.unpack_from(frame, size - 4)
    if zlib.crc32(frame[:-4]) != crc:
        raise LogError("corrupt log record: CRC-32 mismatch")
    fmt, ts, n_headers = _HEAD.unpack_from(frame, 0)
    if fmt != FRAME_FORMAT:
        raise LogError(f"corrupt log record: unknown frame format {fmt}")
    try:
        pos = _HEAD.size
        headers: tuple[tuple[str, bytes], ...] = ()
        if n_headers:
            start = pos
            for _ in range(n_headers):
                (n,) = _U16.unpack_from(frame, pos)
                pos += 2 + n
                (n,) = _U32.unpack_from(frame, pos)
                pos += 4 + n
            block = frame[start:pos]
            found = _HEADER_BLOCKS.get(block)
            if found is None:
                found = _decode_headers(block, n_headers)
                if len(_HEADER_BLOCKS) >= _HEADER_BLOCKS_LIMIT:
                    _HEADER_BLOCKS.clear()
                _HEADER_BLOCKS[block] = found
            headers = found
        (n,) = _I32.unpack_from(frame, pos)
        pos += 4
        key = None if n < 0 else frame[pos : pos + n]
        pos += max(n, 0)
        (n,) = _I32.unpack_from(frame, pos)
        pos += 4
        value = None if n < 0 else frame[pos : pos + n]
        pos += max(n, 0)
    except (struct.error, UnicodeDecodeError) as exc:
        raise LogError(f"corrupt log record: {exc}") from exc
    if pos != size - 4:
        raise LogError("corrupt log record: length fields do not match the frame size")
    return ts, key, value, headers


def _frame_timestamp(frame: bytes) -> int:
    ts: int = _HEAD.unpack_from(frame, 0)[1]
    return ts


# -- in-memory state ----------------------------------------------------------------------


class _Partition:
    """Offsets of one partition: what is assigned, what is durable, where the log starts."""

    __slots__ = ("committed_ts", "end", "index", "last_ts", "next", "start", "topic")

    def __init__(self, topic: _Topic, index: int, start: int, end: int, last_ts: int) -> None:
        self.topic = topic
        self.index = index
        self.start = start
        self.end = end
        """Next offset after the last durable record (what readers and ``bounds`` see)."""
        self.next = end
        """Next offset to assign; runs ahead of ``end`` while a batch is being written."""
        self.last_ts = last_ts
        """Timestamp of the newest assigned record (the floor for the next one)."""
        self.committed_ts = last_ts


@dataclass(eq=False)
class _Topic(WakesReaders):
    spec: TopicSpec
    cf: Rdict
    handle: ColumnFamily
    parts: list[_Partition] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    """Readers parked at the end of every partition, woken after the next commit."""


# A pending append: (future, partition, offset, timestamp, deadline on the loop clock).
_Pending = tuple["asyncio.Future[AppendResult]", _Partition, int, int, float]


def _start_key(topic: str, partition: int) -> bytes:
    return f"start/{topic}/{partition}".encode()


def _topic_key(topic: str) -> bytes:
    return f"topic/{topic}".encode()


def _raw_options(cache: Cache, *, create: bool) -> Options:
    opts = rocksdb_budget.bounded(Options(raw_mode=True))
    opts.set_block_based_table_factory(rocksdb_budget.table_options(cache))
    opts.create_if_missing(create)
    opts.create_missing_column_families(True)
    # A crash can leave a torn last record in the WAL, never an acknowledged one (appends are
    # acknowledged once synced). Any other damage fails the open: RocksDB's default recovery
    # would stop at it and drop every record after it without a word.
    opts.set_wal_recovery_mode(DBRecoveryMode.tolerate_corrupted_tail_records())
    return opts


def _has_database_files(path: Path) -> bool:
    return any(
        f.suffix in (".sst", ".log") or f.name.startswith("MANIFEST-") for f in path.iterdir()
    )


def _ended(it: RdictIter, where: str) -> None:
    """Raise :class:`LogCorrupt` if ``it`` stopped on a read error rather than at the end of
    the data: RocksDB reports a bad block only through the iterator's status, so the scan
    would otherwise look complete."""
    try:
        it.status()
    except Exception as exc:  # rocksdict raises plain Exception
        raise LogCorrupt(f"embedded log unreadable {where}: {exc}") from None


class EmbeddedLog(LocalTopics[_Topic, _Partition]):
    """A durable single-node ``EventLog`` stored in RocksDB (spec 05 §8.1).

    One process may open a path read-write (RocksDB holds a lock file); any number of
    processes may open it read-only at the same time (``open_read_only``), e.g.
    ``sockudo-tools`` next to a running node. A read-only log sees the records that were
    durable when it was started.

    ``fsync``: ``always`` acknowledges after a synced group commit; ``interval`` acknowledges
    after the unsynced write and syncs the WAL every ``fsync_interval_ms`` (a power loss may
    drop that much, a process crash nothing); ``never`` leaves syncing to the OS.

    Compacted topics (``cleanup.policy`` containing ``compact``) are compacted every
    ``compaction_interval_ms`` (0 = only when ``compact`` is called). ``clock`` (wall time in
    ms) is injectable so tests can make time run backwards across a restart.

    ``sync_batches`` counts synced group commits and ``write_batches`` all batch writes, so
    tests and benchmarks can see how many records share one fsync.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: str = "always",
        fsync_interval_ms: int = 100,
        max_record_bytes: int = MAX_RECORD_BYTES,
        read_only: bool = False,
        compaction_interval_ms: int = 600_000,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}")
        if fsync_interval_ms <= 0:
            raise ValueError("fsync_interval_ms must be positive")
        self.path = Path(path)
        self.fsync = fsync
        self.read_only = read_only
        self._interval_s = fsync_interval_ms / 1000
        self._compaction_s = compaction_interval_ms / 1000
        self._max_record_bytes = max_record_bytes
        self._clock = clock
        self._db: Rdict | None = None
        self._cache = rocksdb_budget.block_cache()
        self._meta: Rdict | None = None
        self._meta_handle: ColumnFamily | None = None
        self._topics: dict[str, _Topic] = {}
        self._readers: set[EmbeddedReader] = set()
        self._admin_lock = asyncio.Lock()
        # Batches are written unsynced; with fsync="always" WalSync flushes the WAL afterwards
        # without the GIL (rocksdict holds it through a synced write: see wal_sync.py).
        self._write_opts = WriteOptions()
        self._write_opts.sync = False
        self._wal: WalSync | None = None
        self._sync_opts = WriteOptions()
        self._sync_opts.sync = fsync != "never"
        # One thread owns every write (group commits, truncation, compaction deletes, WAL
        # syncs, open and close), so they never overlap and never wait behind a long scan.
        self._writer_pool: ThreadPoolExecutor | None = None
        # Scans (polls, time lookups, compaction) run here; close() waits for them to finish
        # before the database is closed under them.
        self._read_pool: ThreadPoolExecutor | None = None
        self._batch = WriteBatch(raw_mode=True)
        self._pending: list[_Pending] = []
        self._inflight: list[_Pending] = []
        self._wake = asyncio.Event()
        self._watchdog = Watchdog(self._expire_overdue)
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._unflushed = False
        self._accepting = False
        """True while appends may enter the batch (started, writable, not closing, not failed)."""
        self._closing = False
        self._failure: BaseException | None = None
        self.sync_batches = 0
        """Batch writes made with ``sync=True`` (one fsync each)."""
        self.write_batches = 0
        """All batch writes of appended records."""

    @classmethod
    def open_read_only(cls, path: str | os.PathLike[str]) -> EmbeddedLog:
        """A log that reads ``path`` without locking it (the node may be running); not started."""
        return cls(path, read_only=True)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._db is not None:
            return
        if self._closing:
            raise LogUnavailable("embedded log is closed")
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="sockudo-log-writer")
        self._read_pool = ThreadPoolExecutor(2, thread_name_prefix="sockudo-log-reader")
        try:
            await self._on_writer(self._open)
        except BaseException:
            self._writer_pool.shutdown(wait=False)
            self._read_pool.shutdown(wait=False)
            self._writer_pool = self._read_pool = None
            raise
        if self.read_only:
            return
        self._accepting = True
        self._writer = asyncio.create_task(self._write_loop(), name="embedded-log-writer")
        if self.fsync == "interval":
            self._tasks.append(asyncio.create_task(self._flush_loop(), name="embedded-log-fsync"))
        if self._compaction_s > 0:
            self._tasks.append(
                asyncio.create_task(self._compaction_loop(), name="embedded-log-compaction")
            )

    def _cf_options(self) -> Options:
        opts = Options(raw_mode=True)
        opts.set_block_based_table_factory(rocksdb_budget.table_options(self._cache))
        return opts

    def _open(self) -> None:
        """Open the database and recover every partition's offsets (runs in the writer thread)."""
        path = str(self.path)
        exists = (self.path / "CURRENT").exists()
        try:
            if self.read_only:
                if not exists:
                    raise LogUnavailable(f"no embedded log at {self.path}")
                # The column families as the MANIFEST lists them (rocksdict would otherwise
                # go by its own options file). error_if_log_file_exist=False: a running node
                # always has a live WAL.
                names = Rdict.list_cf(path, Options(raw_mode=True))
                db = Rdict(
                    path,
                    Options(raw_mode=True),
                    column_families={n: Options(raw_mode=True) for n in names if n != "default"},
                    access_type=AccessType.read_only(False),
                )
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                if not exists and _has_database_files(self.path):
                    # Creating a database here would orphan those files (and the next
                    # start would then serve an empty log): refuse, change nothing.
                    raise LogUnavailable(
                        f"embedded log at {self.path} has database files but no CURRENT "
                        "file: refusing to create a new log over them"
                    )
                existing = Rdict.list_cf(path, Options(raw_mode=True)) if exists else []
                cfs = {name: self._cf_options() for name in {*existing, _META_CF}}
                cfs.pop("default", None)
                db = Rdict(path, _raw_options(self._cache, create=not exists), column_families=cfs)
        except LogUnavailable:
            raise
        except Exception as exc:
            raise LogUnavailable(f"cannot open embedded log at {self.path}: {exc}") from exc
        self._db = db
        if not self.read_only and self.fsync == "always":
            self._wal = WalSync(path)
        try:
            self._load_topics(path)
        except LogError:
            raise
        except Exception as exc:  # rocksdict raises plain Exception
            raise LogUnavailable(f"cannot read embedded log at {self.path}: {exc}") from exc

    def _load_topics(self, path: str) -> None:
        db = self._db
        assert db is not None
        cf_names = set(Rdict.list_cf(path, Options(raw_mode=True)))
        if _META_CF not in cf_names:  # read-only open of a log that never had a topic
            return
        self._meta = db.get_column_family(_META_CF)
        self._meta_handle = db.get_column_family_handle(_META_CF)
        for k, v in self._meta.items(from_key=b"topic/"):
            raw_key, raw_value = bytes(k), bytes(v)  # type: ignore[arg-type]  # raw mode
            if not raw_key.startswith(b"topic/"):
                break
            name = raw_key[len(b"topic/") :].decode()
            info = json.loads(raw_value)
            spec = TopicSpec(name, int(info["partitions"]), dict(info["config"]))
            if _TOPIC_CF_PREFIX + name not in cf_names:
                raise LogError(f"embedded log: topic {name} has no column family")
            self._topics[name] = self._load_topic(spec)

    def _load_topic(self, spec: TopicSpec) -> _Topic:
        assert self._db is not None
        assert self._meta is not None
        cf_name = _TOPIC_CF_PREFIX + spec.name
        topic = _Topic(
            spec, self._db.get_column_family(cf_name), self._db.get_column_family_handle(cf_name)
        )
        it = topic.cf.iter()
        for p in range(spec.partitions):
            raw_start = self._meta.get(_start_key(spec.name, p))
            start = 0 if raw_start is None else _U64.unpack(raw_start)[0]
            # The next offset is one past the last key of the partition. Compaction never
            # removes a partition's last record, and when truncation removed every record the
            # stored start is the end.
            it.seek_for_prev(_KEY.pack(p, _MAX_OFFSET))
            end, last_ts = start, 0
            if not it.valid():
                _ended(it, f"at the end of {spec.name}[{p}]")
            else:
                found_p, last = _KEY.unpack(it.key())
                if found_p == p:
                    end = max(start, last + 1)
                    last_ts = _frame_timestamp(it.value())
            topic.parts.append(_Partition(topic, p, start, end, last_ts))
        del it
        return topic

    async def close(self) -> None:
        """Write every append accepted so far, then release the database and its threads."""
        if self._closing:
            return
        self._closing = True
        self._accepting = False
        if self._writer is not None:
            self._wake.set()
            with contextlib.suppress(Exception):
                await self._writer
            self._writer = None
        self._watchdog.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for reader in list(self._readers):
            reader._closed = True
        self._readers.clear()
        for topic in self._topics.values():
            topic.wake_readers()
        if self._read_pool is not None:
            await asyncio.to_thread(self._read_pool.shutdown, True)
            self._read_pool = None
        if self._writer_pool is not None:
            await self._on_writer(self._close_db)
            self._writer_pool.shutdown(wait=True)
            self._writer_pool = None

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        if not self.read_only and self.fsync != "always" and self._failure is None:
            with contextlib.suppress(Exception):
                db.flush_wal(True)
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        topics = list(self._topics.values())
        self._topics.clear()
        for topic in topics:
            topic.cf.close()
            del topic.cf, topic.handle  # see the module docstring: they hold the lock file
        if self._meta is not None:
            self._meta.close()
        self._meta = self._meta_handle = None
        db.close()

    def _require_open(self) -> Rdict:
        if self._db is None or self._closing:
            raise LogUnavailable("embedded log is not started (or already closed)")
        return self._db

    def _require_writable(self) -> Rdict:
        db = self._require_open()
        if self.read_only:
            raise LogUnavailable(f"embedded log at {self.path} is opened read-only")
        if self._failure is not None:
            raise LogUnavailable(
                f"embedded log failed earlier and must be reopened: {self._failure}"
            )
        return db

    async def _on_writer(self, fn: Callable[..., _T], *args: Any) -> _T:
        assert self._writer_pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, fn, *args)

    async def _on_reader(self, fn: Callable[..., _T], *args: Any) -> _T:
        self._require_open()
        assert self._read_pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, fn, *args)

    # -- topics --------------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        return False  # one process writes it (RocksDB's lock)

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    async def ensure_topic(self, name: str, partitions: int, config: Mapping[str, str]) -> None:
        if partitions < 1:
            raise LogError(f"topic {name}: partitions must be >= 1, not {partitions}")
        async with self._admin_lock:
            existing = self._topics.get(name)
            if existing is None:
                self._require_writable()
                spec = TopicSpec(name, partitions, dict(config))
                self._topics[name] = await self._on_writer(self._create_topic, spec)
                return
        actual = existing.spec
        check_existing_topic(name, partitions, config, actual.partitions, actual.cleanup_policy)

    def _create_topic(self, spec: TopicSpec) -> _Topic:
        db = self._require_open()
        if self._meta is None:
            self._meta = db.get_column_family(_META_CF)
            self._meta_handle = db.get_column_family_handle(_META_CF)
        cf_name = _TOPIC_CF_PREFIX + spec.name
        # A crash between creating the column family and writing the spec leaves an empty
        # family without a spec: reuse it.
        if cf_name not in Rdict.list_cf(str(self.path), Options(raw_mode=True)):
            db.create_column_family(cf_name, self._cf_options())
        info = {"partitions": spec.partitions, "config": dict(spec.config)}
        self._meta.put(
            _topic_key(spec.name), json.dumps(info, sort_keys=True).encode(), self._sync_opts
        )
        return self._load_topic(spec)

    async def partitions(self, topic: str) -> int:
        return len(self._topic(topic).parts)

    def topics(self) -> dict[str, TopicSpec]:
        """Every topic of the log with its partitions and config."""
        self._require_open()
        return {name: t.spec for name, t in self._topics.items()}

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
        # This is the hot path (one call per record): no awaits before the record is in the
        # batch, no per-call timers, one frame build.
        t = self._topics.get(topic) if self._accepting else None
        if t is None:
            self._require_writable()
            raise UnknownTopic(f"topic {topic} does not exist")
        parts = t.parts
        check_partition(topic, len(parts), partition)
        check_record_size(key, value, headers, self._max_record_bytes)
        # Offsets and timestamps are assigned here, in arrival order, so records of one
        # partition are ordered exactly as their appends were called.
        ps = parts[partition]
        offset = ps.next
        now = self._clock()
        ts = now if now > ps.last_ts else ps.last_ts
        try:
            frame = encode_frame(ts, key, value, headers)
        except struct.error as exc:  # a u16 header count or name length overflowed
            raise RecordTooLarge(f"record headers do not fit the frame: {exc}") from exc
        self._batch.put(_KEY.pack(partition, offset), frame, t.handle)
        ps.next = offset + 1
        ps.last_ts = ts
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AppendResult] = loop.create_future()
        deadline = loop.time() + timeout_ms / 1000
        self._pending.append((fut, ps, offset, ts, deadline))
        if not self._wake.is_set():
            self._wake.set()
        self._watchdog.arm(loop, deadline)
        return await fut

    def _expire_overdue(self) -> None:
        """Fail appends whose ``timeout_ms`` passed; re-arm for the next deadline.

        One timer for all appends instead of one per call: a timer per append cost more than
        framing the record. The record stays in its batch and may still be written, so the
        caller gets ``AppendOutcomeUnknown``.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        upcoming = None
        for fut, ps, _offset, _ts, deadline in (*self._inflight, *self._pending):
            if fut.done():
                continue
            if deadline <= now:
                fut.set_exception(
                    AppendOutcomeUnknown(
                        f"append to {ps.topic.spec.name}[{ps.index}] not durable in time"
                    )
                )
            elif upcoming is None or deadline < upcoming:
                upcoming = deadline
        if upcoming is not None:
            self._watchdog.arm(loop, upcoming)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # Swap the open batch out: appends arriving while it is written go to the next one.
            batch, pending = self._batch, self._pending
            self._batch, self._pending = WriteBatch(raw_mode=True), []
            self._inflight = pending
            assert self._db is not None
            try:
                await loop.run_in_executor(self._writer_pool, self._write_batch, batch)
            except Exception as exc:
                self._fail_all(pending, exc)
                return
            finally:
                self._inflight = []
            self.write_batches += 1
            if self.fsync == "always":
                self.sync_batches += 1
            else:
                self._unflushed = True
            touched: set[_Topic] = set()
            for fut, ps, offset, ts, _deadline in pending:
                # Pending appends are in offset order per partition, so the last one wins.
                ps.end = offset + 1
                ps.committed_ts = ts
                touched.add(ps.topic)
                if not fut.done():
                    fut.set_result(AppendResult(ps.index, offset, ts))
            for topic in touched:
                if topic.waiters:
                    topic.wake_readers()

    def _write_batch(self, batch: WriteBatch) -> None:
        """Write a group commit and, with ``fsync="always"``, sync it (the writer thread)."""
        assert self._db is not None
        self._db.write(batch, self._write_opts)
        if self._wal is not None:
            self._wal.sync()

    def _fail_all(self, written: list[_Pending], exc: Exception) -> None:
        """A batch write failed: the log stops accepting appends until it is reopened.

        RocksDB may have put the failed batch into its WAL, so those offsets can reappear
        after a restart; reusing them in this session could give two records one offset.
        """
        log.error("embedded log write failed; refusing appends until reopened: %s", exc)
        self._failure = exc
        self._accepting = False
        queued, self._pending = self._pending, []
        self._batch = WriteBatch(raw_mode=True)
        for fut, ps, _offset, _ts, _deadline in written:
            ps.next, ps.last_ts = ps.end, ps.committed_ts
            if not fut.done():
                fut.set_exception(AppendOutcomeUnknown(f"embedded log write failed: {exc}"))
        for fut, ps, _offset, _ts, _deadline in queued:
            ps.next, ps.last_ts = ps.end, ps.committed_ts
            if not fut.done():
                fut.set_exception(LogUnavailable(f"embedded log write failed: {exc}"))

    async def _flush_loop(self) -> None:
        # fsync="interval": appends are acknowledged after the (unsynced) write; the WAL is
        # synced here, so a power loss drops at most one interval of acknowledged records.
        while True:
            await asyncio.sleep(self._interval_s)
            if self._unflushed and self._db is not None:
                self._unflushed = False
                try:
                    await self._on_writer(self._db.flush_wal, True)
                except Exception as exc:
                    log.error("embedded log WAL sync failed: %s", exc)
                    self._failure = exc
                    self._accepting = False
                    return

    async def _compaction_loop(self) -> None:
        while True:
            await asyncio.sleep(self._compaction_s)
            for name, topic in list(self._topics.items()):
                if "compact" not in cleanup_policies(topic.spec.cleanup_policy):
                    continue
                try:
                    removed = await self.compact(name)
                except LogError as exc:
                    log.warning("compaction of %s failed: %s", name, exc)
                    continue
                if removed:
                    log.info("compaction removed %d records from %s", removed, name)

    # -- offsets and truncation ----------------------------------------------------------

    async def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        ps = self._partition(topic, partition)
        return ps.start, ps.end

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        ps = self._partition(topic, partition)
        if ps.start >= ps.end:
            return None
        return await self._on_reader(_search_time, ps.topic.cf, partition, ps.start, ps.end, ts_ms)

    async def delete_records(self, topic: str, partition: int, before_offset: int) -> int:
        """DeleteRange of ``[start, before_offset)`` plus the new start, in one synced batch.

        Like Kafka: an offset past the end raises ``OffsetOutOfRange``; one at or below the
        current start changes nothing and returns the current start.
        """
        ps = self._partition(topic, partition)
        self._require_writable()
        async with self._admin_lock:
            if before_offset > ps.end or before_offset < 0:
                raise OffsetOutOfRange(
                    ps.start,
                    ps.end,
                    f"cannot delete {topic}[{partition}] before {before_offset}: "
                    f"log_start={ps.start} end={ps.end}",
                )
            if before_offset <= ps.start:
                return ps.start
            batch = WriteBatch(raw_mode=True)
            batch.delete_range(
                _KEY.pack(partition, ps.start), _KEY.pack(partition, before_offset), ps.topic.handle
            )
            batch.put(_start_key(topic, partition), _U64.pack(before_offset), self._meta_handle)
            await self._on_writer(self._require_open().write, batch, self._sync_opts)
            ps.start = before_offset
            return before_offset

    async def compact(self, topic: str, *, now_ms: int | None = None) -> int:
        """Compact a ``cleanup.policy=compact`` topic; returns how many records were removed.

        Keeps the newest record of every key (records without a key are never removed) and
        never changes an offset. A superseded record is removed once it is older than
        ``min.compaction.lag.ms``; a tombstone that is the newest record of its key is removed
        once older than ``delete.retention.ms`` (default one day). The last record of a
        partition always stays, because it is where the next offset is recovered from.
        """
        t = self._topic(topic)
        self._require_writable()
        if "compact" not in cleanup_policies(t.spec.cleanup_policy):
            return 0
        now = self._clock() if now_ms is None else now_ms
        lag_ms = int(t.spec.config.get("min.compaction.lag.ms", "0"))
        retention_ms = int(t.spec.config.get("delete.retention.ms", _DEFAULT_DELETE_RETENTION_MS))
        removed = 0
        async with self._admin_lock:
            for ps in t.parts:
                if ps.end - ps.start < 2:
                    continue
                doomed = await self._on_reader(
                    _compaction_victims,
                    t.cf,
                    ps.index,
                    ps.start,
                    ps.end,
                    now - lag_ms,
                    now - retention_ms,
                )
                if not doomed:
                    continue
                batch = WriteBatch(raw_mode=True)
                for offset in doomed:
                    batch.delete(_KEY.pack(ps.index, offset), t.handle)
                await self._on_writer(self._require_open().write, batch, self._sync_opts)
                removed += len(doomed)
        return removed

    # -- reading -------------------------------------------------------------------------

    def reader(self, topic: str, positions: Mapping[int, int]) -> EmbeddedReader:
        """A reader; unknown topics and partitions are reported by ``poll``/``seek``."""
        self._require_open()
        reader = EmbeddedReader(self, topic, positions)
        self._readers.add(reader)
        return reader

    def _forget_reader(self, reader: EmbeddedReader) -> None:
        self._readers.discard(reader)


# -- scans (run in the reader threads) ------------------------------------------------------


def _search_time(cf: Rdict, partition: int, start: int, end: int, ts_ms: int) -> int | None:
    """First offset in ``[start, end)`` whose timestamp is ``>= ts_ms`` (binary search).

    Timestamps never decrease along a partition, so "the first existing record at or after
    offset x has ts >= ts_ms" is monotone in x even with compaction gaps.
    """
    it = cf.iter()
    upper = _KEY.pack(partition, end)

    def first_from(offset: int) -> tuple[int, int] | None:
        it.seek(_KEY.pack(partition, offset))
        if not it.valid():
            _ended(it, f"from offset {offset} of partition {partition}")
            return None
        if it.key() >= upper:
            return None
        return _KEY.unpack(it.key())[1], _frame_timestamp(it.value())

    lo, hi = start, end
    while lo < hi:
        mid = (lo + hi) // 2
        found = first_from(mid)
        if found is None or found[1] >= ts_ms:
            hi = mid
        else:
            lo = found[0] + 1
    found = first_from(lo) if lo < end else None
    return None if found is None else found[0]


def _compaction_victims(
    cf: Rdict, partition: int, start: int, end: int, lag_cutoff: int, tombstone_cutoff: int
) -> list[int]:
    newest: dict[bytes, int] = {}
    records: list[tuple[int, bytes, int, bool]] = []
    it = cf.iter()
    it.seek(_KEY.pack(partition, start))
    upper = _KEY.pack(partition, end)
    while it.valid():
        k = it.key()
        if k >= upper:
            break
        offset = _KEY.unpack(k)[1]
        ts, key, value, _headers = decode_frame(it.value())
        if key is not None:
            newest[key] = offset
            records.append((offset, key, ts, value is None))
        it.next()
    else:
        _ended(it, f"in partition {partition}")
    last = end - 1
    doomed = []
    for offset, key, ts, tombstone in records:
        if offset == last:
            continue
        if newest[key] != offset:
            if ts <= lag_cutoff:
                doomed.append(offset)
        elif tombstone and ts <= tombstone_cutoff:
            doomed.append(offset)
    return doomed


def _scan(
    cf: Rdict, topic: str, todo: Iterable[tuple[int, int, int]], max_records: int
) -> tuple[list[LogRecord], dict[int, int]]:
    """Read up to ``max_records`` records of ``(partition, from, end)`` ranges, in order.

    Returns the records and each scanned partition's next position (past compaction gaps).
    """
    out: list[LogRecord] = []
    positions: dict[int, int] = {}
    for partition, offset, end in todo:
        budget = max_records - len(out)
        if budget <= 0:
            break
        it = cf.iter()
        it.seek(_KEY.pack(partition, offset))
        upper = _KEY.pack(partition, end)
        n = 0
        last = offset - 1
        while n < budget and it.valid():
            k = it.key()
            if k >= upper:
                break
            last = _KEY.unpack(k)[1]
            ts, key, value, headers = decode_frame(it.value())
            out.append(_new_record(topic, partition, last, ts, key, value, headers))
            n += 1
            it.next()
        if not it.valid():
            _ended(it, f"at offset {last + 1} of {topic}[{partition}]")
        positions[partition] = last + 1 if n == budget else end
    return out, positions


class EmbeddedReader(LocalReader):
    """A ``LogReader`` over one topic of an ``EmbeddedLog``.

    Reads only durable records (offsets below each partition's committed end). At the end of
    every partition ``poll`` parks on the topic's waiter list, which the writer wakes right
    after a group commit, so a new record reaches a waiting reader in about one commit.
    Partitions take turns going first, so one busy partition cannot starve the others.
    """

    _log: EmbeddedLog

    async def _read(self, t: _Topic, order: list[int], max_records: int) -> list[LogRecord] | None:
        todo = [
            (p, position, t.parts[p].end)
            for p in order
            if (position := self._positions[p]) < t.parts[p].end
        ]
        if not todo:
            return []
        records, positions = await self._log._on_reader(
            _scan, t.cf, self._topic_name, todo, max_records
        )
        self._positions.update(positions)
        # Only compaction gaps were left: positions moved, look again.
        return records or None

    async def close(self) -> None:
        await super().close()
        self._log._forget_reader(self)
