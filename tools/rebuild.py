"""``sockudo-tools rebuild``: replay the log into a fresh projection and compare or swap it in.

A projection is a cache of the log: replaying every partition from its log start with the same
fold must give the same bytes in every column family (spec 05 §7.7, check 26).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from projections.projector import STALL_AHEAD, Projector
from projections.store.rocks import FOLD_VERSION, ProjectionStore
from sockudo.config import Settings
from sockudo.errors import SockudoError
from sockudo.log.base import EventLog
from sockudo.log.partitioning import partition_for
from sockudo.node.runtime import decode_record
from sockudo.node.topics import CHANNEL_EVENTS, topic_name


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    seconds: float
    targets: dict[int, int]
    stalled: dict[int, str]
    differences: dict[str, tuple[str, str]] | None
    """Column families whose digests differ from the live projection (``--verify`` only)."""

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


async def replay(
    event_log: EventLog,
    topic: str,
    target: Path,
    *,
    until: dict[int, int] | None = None,
    batch: int = 10_000,
) -> tuple[int, dict[int, int], dict[int, str]]:
    """Fold ``topic`` from each partition's log start into a new store at ``target``.

    Stops at ``until`` (per-partition positions) or at the end offsets seen when it starts.
    Returns (records folded, positions reached, stalled partitions with reasons).

    Batches are large (nobody waits on a rebuild's outcomes): a channel's head is written once
    per batch, and the store is a bulk load (no WAL, key-ordered batches, flushed at close).
    Batching never changes the folded state (tests/unit/test_channel_fold.py).
    """
    partitions = await event_log.partitions(topic)
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    ahead: dict[int, str] = {}
    for p in range(partitions):
        starts[p], end = await event_log.bounds(topic, p)
        ends[p] = until[p] if until is not None and p in until else end
        if ends[p] > end:
            # The live projection folded records this log does not have: fold what it has.
            ahead[p] = f"{STALL_AHEAD}: checkpoint {ends[p]} > log end {end}"
            ends[p] = end
    ProjectionStore.destroy(target)
    store = ProjectionStore(target, bulk_load=True)
    store.set_projection_info({"schema": 1, "fold_version": FOLD_VERSION, "created_from": "log"})
    projector = Projector(
        store, topic, partitions, decode_record, partition_for, collect_deliveries=False
    )
    folded = 0
    active = {p for p in range(partitions) if starts[p] < ends[p]}
    reader = event_log.reader(topic, {p: starts[p] for p in active})
    try:
        while active:
            records = await reader.poll(batch, 500)
            if not records:
                continue
            wanted = [r for r in records if r.offset < ends[r.partition]]
            positions = {
                p: min(reader.position(p), ends[p]) for p in {r.partition for r in records}
            }
            result = projector.apply(wanted, positions)
            folded += result.applied
            for p in list(active):
                if projector.state[p].position >= ends[p] or projector.state[p].stall:
                    active.discard(p)
    finally:
        await reader.close()
    reached = {p: st.position for p, st in projector.state.items()}
    stalled = {p: s.reason for p, s in projector.stalled().items()} | ahead
    store.close()
    return folded, reached, stalled


class ProjectionInUse(SockudoError):
    """The projection to replace is open in a running node."""


@contextlib.contextmanager
def exclusive(projection: Path) -> Iterator[None]:
    """Hold the projection's RocksDB lock for the block: a running node holds it, and the
    directory must not be swapped under it (its RocksDB would go on writing into the new one).
    Raises :class:`ProjectionInUse` when it is held."""
    lock = projection / "LOCK"
    if not lock.exists():
        yield  # no projection yet: nothing can be open on it
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # RocksDB locks it the same way
        except OSError:
            raise ProjectionInUse(
                f"the projection at {projection} is in use by a running node: stop the node "
                "first (or compare without replacing: rebuild --verify)"
            ) from None
        yield
    finally:
        os.close(fd)


async def rebuild(
    settings: Settings, event_log: EventLog, projection: Path, *, verify: bool
) -> RebuildReport:
    """Replay into ``projection.new``; with ``verify`` compare with the live one, else swap
    (refused while a node has the projection open)."""
    if verify:
        return await _rebuild(settings, event_log, projection, verify=True)
    with exclusive(projection):
        return await _rebuild(settings, event_log, projection, verify=False)


async def _rebuild(
    settings: Settings, event_log: EventLog, projection: Path, *, verify: bool
) -> RebuildReport:
    topic = topic_name(settings.topic_prefix, CHANNEL_EVENTS)
    fresh = projection.with_name(projection.name + ".new")
    until: dict[int, int] | None = None
    live_digests: dict[str, str] | None = None
    if verify:
        live = ProjectionStore(projection, read_only=True)
        try:
            partitions = await event_log.partitions(topic)
            until = {}
            for p in range(partitions):
                ckpt = live.checkpoint(topic, p)
                until[p] = ckpt.position if ckpt else 0
            live_digests = live.digests()
        finally:
            live.close()
    began = time.perf_counter()
    folded, reached, stalled = await replay(event_log, topic, fresh, until=until)
    seconds = time.perf_counter() - began

    differences: dict[str, tuple[str, str]] | None = None
    if live_digests is not None:
        rebuilt = ProjectionStore(fresh, read_only=True)
        try:
            new_digests = rebuilt.digests()
        finally:
            rebuilt.close()
        differences = {
            cf: (live_digests.get(cf, ""), new_digests.get(cf, ""))
            for cf in sorted(set(live_digests) | set(new_digests))
            if live_digests.get(cf) != new_digests.get(cf)
        }
        shutil.rmtree(fresh, ignore_errors=True)
    else:
        old = projection.with_name(projection.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if projection.exists():
            projection.rename(old)
        fresh.rename(projection)
        shutil.rmtree(old, ignore_errors=True)
    return RebuildReport(folded, seconds, reached, stalled, differences)
