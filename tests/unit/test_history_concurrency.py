"""WS history reads off the event loop: per-socket accounting and pinned projection views."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from projections.reads.history import HistoryQuery, read_page
from projections.store import keys
from projections.store.kv import MemoryKV
from projections.store.rocks import ProjectionStore
from sockudo.ws.streams import MAX_CONCURRENT_HISTORY, HistoryReads
from tests.unit.test_history_page_json import APP, CHANNEL, fold_all, publish

# --- in-flight accounting ---------------------------------------------------------------------


async def _wait(gate: asyncio.Event, log: list[str], name: str) -> None:
    await gate.wait()
    log.append(name)


async def test_a_third_read_is_refused_while_two_are_in_flight() -> None:
    reads = HistoryReads()
    assert reads.limit == MAX_CONCURRENT_HISTORY == 2
    gates = [asyncio.Event() for _ in range(3)]
    done: list[str] = []
    first = reads.start(_wait(gates[0], done, "a"), name="a")
    second = reads.start(_wait(gates[1], done, "b"), name="b")
    assert first is not None
    assert second is not None
    assert len(reads) == 2
    assert reads.full()
    refused = _wait(gates[2], done, "c")
    assert reads.start(refused, name="c") is None
    assert refused.cr_frame is None  # closed, not left to warn "never awaited"
    gates[0].set()
    await first
    # Counted until the read's own task ends, not a loop iteration later.
    assert len(reads) == 1
    assert not reads.full()
    third = reads.start(_wait(gates[2], done, "c"), name="c")
    assert third is not None
    assert reads.full()
    gates[1].set()
    gates[2].set()
    await asyncio.gather(second, third)
    assert sorted(done) == ["a", "b", "c"]
    assert len(reads) == 0


async def test_a_failed_read_is_no_longer_counted() -> None:
    async def boom() -> None:
        raise RuntimeError("read failed")

    reads = HistoryReads()
    task = reads.start(boom(), name="boom")
    assert task is not None
    with pytest.raises(RuntimeError):
        await task
    assert len(reads) == 0


async def test_close_cancels_reads_in_flight_and_refuses_new_ones() -> None:
    reads = HistoryReads()
    never = asyncio.Event()
    started = reads.start(_wait(never, [], "a"), name="a")
    await asyncio.sleep(0)  # running
    unstarted = reads.start(_wait(never, [], "b"), name="b")  # cancelled before its first step
    assert started is not None
    assert unstarted is not None
    await reads.close()
    assert started.cancelled()
    assert unstarted.cancelled()
    assert len(reads) == 0
    assert reads.full()
    late = _wait(never, [], "c")
    assert reads.start(late, name="c") is None


# --- pinned views -----------------------------------------------------------------------------


def _copy(kv: MemoryKV, store: ProjectionStore) -> None:
    """Write ``kv``'s contents into ``store`` (deleting rows it no longer has)."""
    changes: dict[str, dict[bytes, bytes | None]] = {}
    for cf in keys.COLUMN_FAMILIES:
        rows: dict[bytes, bytes | None] = dict(kv.items(cf))
        for k, _ in store.scan(cf, b"", b"\xff" * 64):
            rows.setdefault(k, None)
        changes[cf] = rows
    store.write(changes)


def test_a_pinned_view_reads_the_store_as_it_was_when_pinned(tmp_path: Path) -> None:
    store = ProjectionStore(tmp_path / "proj")
    try:
        kv = MemoryKV()
        events = [publish(i) for i in range(5)]
        fold_all(kv, events)
        _copy(kv, store)
        query = HistoryQuery(limit=100)
        before = read_page(store, APP, CHANNEL, query, stall=None, node_id="n")
        head_key = keys.channel_prefix(APP, CHANNEL)
        head_before = store.get(keys.STREAMS, head_key)
        view = store.pin((keys.STREAMS, keys.HISTORY))
        # The fold goes on: five more messages and a new head.
        fold_all(kv, [*events, *(publish(i) for i in range(5, 10))])
        _copy(kv, store)
        after = read_page(store, APP, CHANNEL, query, stall=None, node_id="n")
        assert len(after["items"]) == 10
        assert len(before["items"]) == 5

        result: list[object] = []
        thread = threading.Thread(
            target=lambda: result.append(
                read_page(view, APP, CHANNEL, query, stall=None, node_id="n")
            )
        )
        thread.start()
        thread.join()
        assert result == [before]
        # Point reads see the pinned head too; unpinned column families are refused.
        assert head_before is not None
        assert view.get(keys.STREAMS, head_key) == head_before != store.get(keys.STREAMS, head_key)
        assert view.get(keys.STREAMS, head_key + b"\x00missing") is None
        with pytest.raises(KeyError):
            view.get(keys.META, b"projection")
        view.close()
    finally:
        store.close()


def test_one_scan_at_a_time_per_column_family(tmp_path: Path) -> None:
    store = ProjectionStore(tmp_path / "proj")
    try:
        kv = MemoryKV()
        fold_all(kv, [publish(i) for i in range(3)])
        _copy(kv, store)
        view = store.pin((keys.HISTORY,))
        scan = view.scan(keys.HISTORY, b"", b"\xff" * 64)
        assert next(scan) is not None
        with pytest.raises(RuntimeError):
            list(view.scan(keys.HISTORY, b"", b"\xff" * 64))
        assert len(list(scan)) == 2
        assert len(list(view.scan(keys.HISTORY, b"", b"\xff" * 64, reverse=True))) == 3
        view.close()
    finally:
        store.close()
