"""A projection with a bad block on disk: reads fail with a typed error, never come back short.

RocksDB ends an iterator at a block whose checksum fails as if the data ended there, and says
so only through the iterator's status; a history page would otherwise be silently partial.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from projections.store import keys
from projections.store.rocks import ProjectionStore
from sockudo.errors import ProjectionCorrupt

CF = keys.HISTORY
ROWS = 600


def key(n: int) -> bytes:
    return b"ck\x00" + n.to_bytes(8, "big")


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    path = tmp_path / "p"
    bulk = ProjectionStore(path, bulk_load=True)
    bulk.write({CF: {key(n): os.urandom(100).hex().encode() for n in range(ROWS)}})
    bulk.close()  # flushed into a table file
    (table,) = path.glob("*.sst")
    data = bytearray(table.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a data block
    table.write_bytes(bytes(data))
    return path


READS: dict[str, Callable[[Any], object]] = {
    "scan": lambda kv: list(kv.scan(CF, key(0), key(ROWS))),
    "reverse scan": lambda kv: list(kv.scan(CF, key(0), key(ROWS), reverse=True)),
    "scan window": lambda kv: kv.scan_window(CF, key(0), key(ROWS), ROWS + 1),
    "first rows": lambda kv: list(islice(kv.scan(CF, key(0), key(ROWS)), ROWS)),
}


@pytest.mark.parametrize("read", list(READS), ids=list(READS))
@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_reads_through_a_bad_block_raise(damaged: Path, read: str, read_only: bool) -> None:
    store = ProjectionStore(damaged, read_only=read_only)
    try:
        with pytest.raises(ProjectionCorrupt, match="rebuild"):
            READS[read](store)
        view = store.pin([CF])
        try:
            with pytest.raises(ProjectionCorrupt):
                READS[read](view)
        finally:
            view.close()
    finally:
        store.close()


def test_digests_for_verify_raise_too(damaged: Path) -> None:
    store = ProjectionStore(damaged, read_only=True)
    try:
        with pytest.raises(ProjectionCorrupt):
            store.digests()
    finally:
        store.close()


def test_an_undamaged_store_reads_whole(tmp_path: Path) -> None:
    store = ProjectionStore(tmp_path / "p")
    try:
        store.write({CF: {key(n): b"v" for n in range(ROWS)}})
        for read in READS.values():
            assert len(read(store)) == ROWS  # type: ignore[arg-type]
        assert store.digests()[CF].endswith(f":{ROWS}")
    finally:
        store.close()
