"""Embedded log durability (spec 05 §8.1, check 22): acknowledged means on disk.

Also: group commit (many appends share one synced write), restart recovery, the stored frame
layout, read-only access next to a writer, and what callers see when the disk stalls or fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import pytest
from rocksdict import Options, Rdict

from sockudo.errors import (
    AppendOutcomeUnknown,
    LogCorrupt,
    LogError,
    LogUnavailable,
    TopicMismatch,
)
from sockudo.log.base import LogRecord
from sockudo.log.embedded import EmbeddedLog, decode_frame, encode_frame

ROOT = Path(__file__).resolve().parents[2]
T = 10_000
DELETE = {"cleanup.policy": "delete"}

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from sockudo.log.embedded import EmbeddedLog

    async def main() -> None:
        log = EmbeddedLog(sys.argv[1])  # fsync="always" is the default
        await log.start()
        await log.ensure_topic("t", 1, {"cleanup.policy": "delete"})
        counter = iter(range(10**9))

        async def appender() -> None:
            for i in counter:
                r = await log.append("t", 0, b"key-%d" % i, b"value-%d" % i * 20,
                                     [("seq", b"%d" % i)], timeout_ms=10_000)
                sys.stdout.write(f"{r.offset} {i}\\n")
                sys.stdout.flush()

        await asyncio.gather(*(appender() for _ in range(16)))  # until SIGKILL

    asyncio.run(main())
    """
)


def expected(i: int) -> tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]:
    return b"key-%d" % i, b"value-%d" % i * 20, (("seq", b"%d" % i),)


async def read_everything(path: Path, topic: str = "t", partition: int = 0) -> list[LogRecord]:
    log = EmbeddedLog(path)
    await log.start()
    try:
        start, end = await log.bounds(topic, partition)
        reader = log.reader(topic, {partition: start})
        out: list[LogRecord] = []
        while reader.position(partition) < end:
            out += await reader.poll(1000, 500)
        await reader.close()
        return out
    finally:
        await log.close()


def test_sigkill_right_after_acknowledged_appends_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert child.stdout is not None
    acked: dict[int, int] = {}
    try:
        for line in child.stdout:
            offset, i = map(int, line.split())
            acked[offset] = i
            if len(acked) == 500:
                assert child.poll() is None, "the child must still be appending"
                child.kill()  # SIGKILL: no close, no flush, batches in flight
                break
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    assert len(acked) == 500, "the child stopped acknowledging before it was killed"
    assert child.returncode == -9

    stored = asyncio.run(read_everything(path))
    offsets = [r.offset for r in stored]
    assert offsets == list(range(len(stored))), "offsets contiguous from 0"
    by_offset = {r.offset: r for r in stored}
    for offset, i in acked.items():
        r = by_offset[offset]
        assert (r.key, r.value, r.headers) == expected(i), f"offset {offset} byte-exact"
    # Records written but not yet acknowledged may also be there; they must be whole.
    for r in stored:
        assert r.headers
        assert (r.key, r.value, r.headers) == expected(int(r.headers[0][1]))


async def test_concurrent_appends_share_synced_writes(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    try:
        await log.ensure_topic("t", 2, DELETE)
        before = log.sync_batches
        results = await asyncio.gather(
            *(log.append("t", i % 2, b"k", b"%d" % i, timeout_ms=T) for i in range(1000))
        )
        synced = log.sync_batches - before
        for p in (0, 1):
            assert sorted(r.offset for r in results if r.partition == p) == list(range(500))
        assert 1 <= synced <= 20, f"{synced} synced writes for 1000 concurrent appends"
        assert log.write_batches == log.sync_batches
    finally:
        await log.close()


async def test_reopen_continues_offsets_start_and_time(tmp_path: Path) -> None:
    future = 4_000_000_000_000  # year 2096: the clock will seem to run backwards on reopen
    log = EmbeddedLog(tmp_path / "log", clock=lambda: future)
    await log.start()
    await log.ensure_topic("t", 2, DELETE)
    await log.ensure_topic("r", 1, {"cleanup.policy": "compact"})
    first = [await log.append("t", 1, b"k", b"a%d" % i, timeout_ms=T) for i in range(5)]
    assert await log.delete_records("t", 1, 2) == 2
    for v in (b"1", b"2"):
        await log.append("r", 0, b"same", v, timeout_ms=T)
    await log.append("r", 0, b"other", b"x", timeout_ms=T)
    assert await log.compact("r") == 1
    await log.close()

    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    try:
        assert await log.partitions("t") == 2
        assert await log.bounds("t", 1) == (2, 5)
        assert await log.bounds("t", 0) == (0, 0)
        assert await log.bounds("r", 0) == (0, 3)
        with pytest.raises(TopicMismatch):
            await log.ensure_topic("r", 1, DELETE)
        nxt = await log.append("t", 1, b"k", b"b", timeout_ms=T)
        assert nxt.offset == 5
        assert nxt.timestamp_ms == first[-1].timestamp_ms == future, "never decreases"
        assert await log.offset_for_time("t", 1, future) == 2
    finally:
        await log.close()
    kept = await read_everything(tmp_path / "log", "r")
    assert [(r.offset, r.value) for r in kept] == [(1, b"2"), (2, b"x")]


async def test_a_log_truncated_to_its_end_reopens_at_its_end(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    await log.ensure_topic("t", 1, DELETE)
    for _ in range(4):
        await log.append("t", 0, None, b"v", timeout_ms=T)
    await log.delete_records("t", 0, 4)
    await log.close()
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    try:
        assert await log.bounds("t", 0) == (4, 4)
        assert (await log.append("t", 0, None, b"v", timeout_ms=T)).offset == 4
    finally:
        await log.close()


async def test_close_writes_every_accepted_append(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    await log.ensure_topic("t", 1, DELETE)
    tasks = [
        asyncio.create_task(log.append("t", 0, None, b"%d" % i, timeout_ms=T)) for i in range(300)
    ]
    await asyncio.sleep(0)  # every append is in a batch now
    await log.close()
    results = [await t for t in tasks]
    assert sorted(r.offset for r in results) == list(range(300))
    assert len(await read_everything(tmp_path / "log")) == 300


async def test_interval_fsync_acknowledges_without_synced_batches(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log", fsync="interval", fsync_interval_ms=20)
    await log.start()
    await log.ensure_topic("t", 1, DELETE)
    await asyncio.gather(*(log.append("t", 0, None, b"v", timeout_ms=T) for _ in range(50)))
    await asyncio.sleep(0.1)  # let the interval sync run at least once
    assert log.sync_batches == 0
    assert log.write_batches >= 1
    await log.close()
    assert len(await read_everything(tmp_path / "log")) == 50


async def test_read_only_next_to_a_running_writer(tmp_path: Path) -> None:
    with pytest.raises(LogUnavailable):
        await EmbeddedLog.open_read_only(tmp_path / "missing").start()
    writer = EmbeddedLog(tmp_path / "log")
    await writer.start()
    try:
        await writer.ensure_topic("t", 1, DELETE)
        for i in range(3):
            await writer.append("t", 0, b"k", b"%d" % i, timeout_ms=T)
        with pytest.raises(LogUnavailable):  # RocksDB's lock: one writer per directory
            await EmbeddedLog(tmp_path / "log").start()
        ro = EmbeddedLog.open_read_only(tmp_path / "log")
        await ro.start()
        try:
            assert await ro.bounds("t", 0) == (0, 3)
            got = await ro.reader("t", {0: 0}).poll(10, 100)
            assert [r.value for r in got] == [b"0", b"1", b"2"]
            with pytest.raises(LogUnavailable):
                await ro.append("t", 0, b"k", b"v", timeout_ms=T)
            with pytest.raises(LogUnavailable):
                await ro.delete_records("t", 0, 1)
        finally:
            await ro.close()
        assert (await writer.append("t", 0, b"k", b"3", timeout_ms=T)).offset == 3
    finally:
        await writer.close()


def test_frame_layout_matches_the_spec() -> None:
    frame = encode_frame(1234, b"key", None, [("sk.type", b"x.y")])
    body = (
        struct.pack(">BqH", 1, 1234, 1)
        + struct.pack(">H", 7)
        + b"sk.type"
        + struct.pack(">I", 3)
        + b"x.y"
        + struct.pack(">i", 3)
        + b"key"
        + struct.pack(">i", -1)
    )
    assert frame == body + struct.pack(">I", zlib.crc32(body))
    assert encode_frame(5, b"k", b"v") == encode_frame(5, b"k", b"v", ())
    assert decode_frame(encode_frame(5, None, b"")) == (5, None, b"", ())
    with pytest.raises(LogError, match="CRC"):
        decode_frame(frame[:-5] + b"\x00" + frame[-4:])


def test_frames_with_headers_decode_exactly_and_bad_lengths_are_errors() -> None:
    headers = (("sk.type", b"channel.publish"), ("sk.schema", b"MessagePublished"))
    other = (("sk.type", b"channel.publish"), ("sk.schema", b"HistoryReset"))
    # Decoded header sections are shared between frames: each frame still gets its own.
    for _ in range(2):
        for hs in (headers, other, (), (("é", b""),)):
            frame = encode_frame(7, b"key", b"value", hs)
            assert decode_frame(frame) == (7, b"key", b"value", hs)

    def reframe(body: bytes) -> bytes:
        return body + struct.pack(">I", zlib.crc32(body))

    good = encode_frame(7, b"key", b"value", headers)[:-4]
    name_len = struct.calcsize(">BqH")
    for bad in (
        # a header value length running past the frame
        good[: name_len + 2 + 7] + struct.pack(">I", 10_000) + good[name_len + 2 + 7 + 4 :],
        # a header name that is not UTF-8
        good[: name_len + 2] + b"\xff" + good[name_len + 3 :],
        # one header fewer announced than written
        good[:9] + struct.pack(">H", 1) + good[11:],
    ):
        with pytest.raises(LogError, match="corrupt"):
            decode_frame(reframe(bad))


async def test_a_corrupted_record_is_an_error_not_a_skip(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    await log.ensure_topic("t", 1, DELETE)
    for i in range(3):
        await log.append("t", 0, b"k", b"%d" % i, timeout_ms=T)
    await log.close()
    db = Rdict(str(tmp_path / "log"), Options(raw_mode=True))
    cf = db.get_column_family("t:t")
    key = struct.pack(">IQ", 0, 1)
    raw = cf[key]
    assert raw is not None
    cf[key] = raw[:-1] + bytes([raw[-1] ^ 0xFF])
    cf.close()
    del cf
    db.close()
    del db
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    try:
        with pytest.raises(LogError, match="corrupt"):
            await log.reader("t", {0: 0}).poll(10, 100)
    finally:
        await log.close()


class _StalledDb:
    """Wraps the database so writes take ``delay`` seconds or fail."""

    def __init__(self, db: Any, delay: float = 0.0, fail: bool = False) -> None:
        self._db, self._delay, self._fail = db, delay, fail

    def write(self, *args: Any) -> None:
        import time

        time.sleep(self._delay)
        if self._fail:
            raise OSError("disk on fire")
        self._db.write(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


async def test_a_stalled_write_times_out_as_outcome_unknown(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    try:
        await log.ensure_topic("t", 1, DELETE)
        real = log._db
        log._db = _StalledDb(real, delay=0.5)  # type: ignore[assignment]
        with pytest.raises(AppendOutcomeUnknown):
            await log.append("t", 0, b"k", b"slow", timeout_ms=100)
        await asyncio.sleep(0.6)
        log._db = real
        # The timed-out record was written after all: "unknown" was the honest answer.
        assert await log.bounds("t", 0) == (0, 1)
        assert (await log.append("t", 0, b"k", b"next", timeout_ms=T)).offset == 1
    finally:
        await log.close()


async def test_a_failed_write_stops_the_log_until_reopened(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    await log.ensure_topic("t", 1, DELETE)
    await log.append("t", 0, b"k", b"ok", timeout_ms=T)
    real = log._db
    log._db = _StalledDb(real, fail=True)  # type: ignore[assignment]
    with pytest.raises(AppendOutcomeUnknown):
        await log.append("t", 0, b"k", b"lost", timeout_ms=T)
    with pytest.raises(LogUnavailable):
        await log.append("t", 0, b"k", b"refused", timeout_ms=T)
    assert await log.bounds("t", 0) == (0, 1)
    log._db = real
    await log.close()
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    try:
        assert (await log.append("t", 0, b"k", b"again", timeout_ms=T)).offset == 1
    finally:
        await log.close()


# -- damage on disk: refused or reported, never read as a shorter log -------------------------


async def _filled_log(path: Path, n: int) -> tuple[EmbeddedLog, list[bytes]]:
    """A log of ``n`` incompressible records (so they span many blocks), left open."""
    values = [os.urandom(120).hex().encode() for _ in range(n)]
    log = EmbeddedLog(path)
    await log.start()
    await log.ensure_topic("t", 1, DELETE)
    for value in values:
        await log.append("t", 0, b"k", value, timeout_ms=T)
    return log, values


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _crash_image(log_dir: Path, to: Path) -> Path:
    """The directory as a crash would leave it: synced WAL, no flush, no clean close."""
    shutil.copytree(log_dir, to)
    (to / "LOCK").unlink()
    return to


async def test_a_bad_block_fails_reads_instead_of_ending_them(tmp_path: Path) -> None:
    log, values = await _filled_log(tmp_path / "log", 400)
    await log.close()
    assert [r.value for r in await read_everything(tmp_path / "log")] == values
    ssts = sorted((tmp_path / "log").glob("*.sst"), key=lambda f: f.stat().st_size)
    assert ssts, "closing the log writes its records into table files"
    _flip(ssts[-1], ssts[-1].stat().st_size // 3)  # inside a data block
    # RocksDB ends an iterator at a bad block as if the data ended there: the reader must say
    # so, not hand out the records before it and move its position to the log end.
    with pytest.raises(LogCorrupt, match="unreadable"):
        await read_everything(tmp_path / "log")


async def test_wal_damage_fails_the_open_but_a_torn_tail_does_not(tmp_path: Path) -> None:
    log, values = await _filled_log(tmp_path / "log", 50)
    flipped = _crash_image(tmp_path / "log", tmp_path / "flipped")
    torn = _crash_image(tmp_path / "log", tmp_path / "torn")
    await log.close()
    (wal,) = flipped.glob("*.log")
    _flip(wal, wal.stat().st_size // 2)
    # RocksDB's default recovery would stop at the damage and drop every record after it.
    with pytest.raises(LogUnavailable, match=r"[Cc]orrupt"):
        await read_everything(flipped)
    # A crash mid-write leaves a torn last record: that one is lost, every other is there.
    (wal,) = torn.glob("*.log")
    os.truncate(wal, wal.stat().st_size - 7)
    stored = await read_everything(torn)
    assert [r.value for r in stored] == values[: len(stored)]
    assert len(stored) == len(values) - 1


async def test_a_log_without_its_current_file_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    log, _ = await _filled_log(tmp_path / "log", 20)
    image = _crash_image(tmp_path / "log", tmp_path / "image")
    await log.close()
    (image / "CURRENT").unlink()
    before = sorted(f.name for f in image.iterdir())
    for _ in range(2):  # a supervisor restarts it: the second start must refuse as well
        with pytest.raises(LogUnavailable, match="no CURRENT"):
            await EmbeddedLog(image).start()
        assert sorted(f.name for f in image.iterdir()) == before
