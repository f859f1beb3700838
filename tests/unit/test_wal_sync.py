"""``WalSync`` finds and syncs the WAL a real RocksDB writes to, across memtable switches."""

from __future__ import annotations

import os
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from sockudo.log.wal_sync import WalSync


def _unsynced_write(db: Rdict, key: bytes, value: bytes) -> None:
    batch = WriteBatch(raw_mode=True)
    batch.put(key, value)
    opts = WriteOptions()
    opts.sync = False
    db.write(batch, opts)


def test_syncs_the_newest_wal_and_follows_switches(tmp_path: Path) -> None:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(str(tmp_path / "db"), opts)
    wal = WalSync(tmp_path / "db")
    try:
        _unsynced_write(db, b"a", b"1")
        first = wal.wal_numbers()
        assert first, "RocksDB keeps a WAL file in the database directory"
        wal.sync()
        assert wal.synced_files == 1
        # The record is in the WAL file (written before the write returned), not only in memory.
        newest = tmp_path / "db" / f"{first[-1]:06d}.log"
        assert os.path.getsize(newest) > 0

        db.flush()  # memtable to SST: RocksDB switches to a new WAL
        _unsynced_write(db, b"b", b"2")
        after = wal.wal_numbers()
        assert after[-1] > first[-1]
        before = wal.synced_files
        wal.sync()
        # The new WAL is synced (and the previous one once more if it still exists).
        assert wal.synced_files - before >= 1
        assert max(wal._fds) == after[-1]
        assert all(n >= after[-1] for n in wal._fds)  # older descriptors are closed
    finally:
        wal.close()
        db.close()
    reopened = Rdict(str(tmp_path / "db"), Options(raw_mode=True))
    try:
        assert reopened[b"a"] == b"1"
        assert reopened[b"b"] == b"2"
    finally:
        reopened.close()
