"""``scan_window`` gives the first pairs of ``scan`` on every store the reads run on."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest

from projections.store import keys
from projections.store.kv import MemoryKV, Overlay
from projections.store.rocks import ProjectionStore

CF = keys.HISTORY


def key(n: int) -> bytes:
    return b"ck\x00" + n.to_bytes(8, "big")


@pytest.mark.parametrize(
    ("start", "end", "count"),
    [(1, 11, 10), (5, 8, 10), (0, 100, 3), (18, 40, 10), (25, 30, 5), (7, 7, 4), (3, 9, 0)],
)
def test_every_store_agrees_with_its_scan(tmp_path: Path, start: int, end: int, count: int) -> None:
    rows = {key(n): f"row {n}".encode() for n in range(1, 21) if n != 12}
    store = ProjectionStore(tmp_path / "p")
    memory = MemoryKV()
    try:
        store.write({CF: rows})
        for k, v in rows.items():
            memory.put(CF, k, v)
        # A batch overlay with its own pending writes and deletes on top of the store.
        overlay = Overlay(store)
        overlay.put(CF, key(12), b"pending")
        overlay.delete(CF, key(6))
        lo, hi = key(start), key(end)
        for kv in (store, memory, Overlay(store), overlay):
            expected = list(islice(kv.scan(CF, lo, hi), count))
            assert kv.scan_window(CF, lo, hi, count) == expected
        view = store.pin([CF])
        try:
            expected = list(islice(store.scan(CF, lo, hi), count))
            assert view.scan_window(CF, lo, hi, count) == expected
        finally:
            view.close()
        assert store.scan_window(CF, key(1), key(21), 100) == sorted(rows.items())
    finally:
        store.close()
