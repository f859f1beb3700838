"""``fdatasync`` of a RocksDB write-ahead log without holding Python's GIL.

rocksdict runs ``write(batch, sync=True)`` entirely under the GIL, fsync included: every
group commit froze the event loop for the disk's flush time (about 0.3 ms, several ms at the
tail), which was most of a publish's latency at a few hundred publishes/s. The embedded log
instead writes its batches unsynced -- RocksDB still writes the WAL record to the file before
returning, it only skips the flush to disk -- and then calls :meth:`WalSync.sync`, whose
``os.fdatasync`` releases the GIL while the disk works. The append is acknowledged only after
it returns, as before.

Which file to sync: a batch goes to the newest WAL (``<number>.log`` in the database
directory; no ``wal_dir`` or log recycling is configured). A batch that fills the memtable may
switch to a new WAL first, so every WAL numbered at or above the last one synced is synced,
and the directory too when a new one appeared. Older WALs receive no writes after a switch and
were synced after their last batch; a WAL deleted meanwhile was flushed into SST files, which
RocksDB syncs itself.
"""

from __future__ import annotations

import os
from pathlib import Path


class WalSync:
    """Syncs the write-ahead logs of one RocksDB directory; used from one thread only."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)
        self._fds: dict[int, int] = {}
        self._floor = 0
        self.synced_files = 0
        """Files synced so far (tests read it)."""

    def wal_numbers(self) -> list[int]:
        """Numbers of the WAL files now in the directory, ascending."""
        numbers = []
        with os.scandir(self._dir) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(".log") and name[:-4].isdigit():
                    numbers.append(int(name[:-4]))
        numbers.sort()
        return numbers

    def sync(self) -> None:
        """Flush every WAL that may hold unsynced records to disk."""
        opened = False
        current = [n for n in self.wal_numbers() if n >= self._floor]
        for number in current:
            fd = self._fds.get(number)
            if fd is None:
                try:
                    fd = os.open(self._dir / f"{number:06d}.log", os.O_RDONLY)
                except FileNotFoundError:
                    continue  # flushed into SST files and deleted: nothing left to sync
                self._fds[number] = fd
                opened = True
            os.fdatasync(fd)  # releases the GIL; Linux syncs the file through any descriptor
            self.synced_files += 1
        if opened:
            # A new WAL's directory entry must survive a power loss as well as its data.
            dir_fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        if current:
            self._floor = current[-1]
            for number in [n for n in self._fds if n < self._floor]:
                os.close(self._fds.pop(number))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
