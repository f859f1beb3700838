"""Fold and rebuild throughput: decode + fold + commit of channel events, no fanout.

    python bench/fold.py --events 1000000 [--kafka HOST:PORT]

Prints a table: the fold alone (records already in memory, 500-record batches as the node
folds them); the RocksDB writes of that fold on their own, and how much of them is
``Rdict.write`` itself, which holds the GIL (see ``bench_commits``); ``Rdict.write`` of the same
changes as a rebuild writes them (10,000-record batches, bulk load); and ``rebuild`` (the same
records replayed from a log into a fresh projection, as ``sockudo-tools rebuild`` does). Each
rate is wall-clock; the CPU-time rate next to it (the fold thread alone, or the whole process
for a rebuild) is what the code costs when other work shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from projections.projector import Projector
from projections.store.rocks import ProjectionStore
from sockudo.events import codec
from sockudo.events.channel import MessagePublished, Origin
from sockudo.log.base import EventLog, LogRecord
from sockudo.log.partitioning import channel_key, partition_for
from sockudo.node.runtime import decode_record
from tools.rebuild import replay

TOPIC = "bench.channel-events"
Encoded = list[tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]]
Captured = tuple[dict[str, dict[bytes, bytes | None]], dict[bytes, bytes | None]]


def make_records(
    n: int, channels: int = 1000
) -> list[tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]]:
    origin = Origin(node="bench/1-abcd")
    out = []
    for i in range(n):
        channel = f"room-{i % channels}"
        enc = codec.encode(
            MessagePublished(
                event_id=str(uuid.uuid4()),
                app_id="app-id",
                channel=channel,
                origin=origin,
                message_id=str(uuid.uuid4()),
                name="message",
                data='{"text":"hello world, this is a benchmark message of moderate size"}',
            )
        )
        out.append((channel_key("app-id", channel), enc.value, enc.headers))
    return out


class CapturingStore(ProjectionStore):
    """A store that keeps a copy of every batch written to it, to time the writes alone."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[Captured] = []

    def write(
        self,
        changes: Mapping[str, Mapping[bytes, bytes | None]],
        meta: Mapping[bytes, bytes | None] | None = None,
    ) -> None:
        self.batches.append(({cf: dict(p) for cf, p in changes.items()}, dict(meta or {})))
        super().write(changes, meta)


def log_records(records: Encoded) -> list[LogRecord]:
    return [
        LogRecord(TOPIC, 0, i, 1_700_000_000_000 + i // 10, k, v, h)
        for i, (k, v, h) in enumerate(records)
    ]


def fold_all(projector: Projector, records: list[LogRecord], batch: int = 500) -> None:
    for i in range(0, len(records), batch):
        projector.apply(records[i : i + batch], {0: min(i + batch, len(records))})


def bench_fold(records: Encoded) -> tuple[float, float]:
    """(events/s wall-clock, events/s of the folding thread's CPU time)."""
    with tempfile.TemporaryDirectory() as d:
        store = ProjectionStore(Path(d) / "p")
        projector = Projector(store, TOPIC, 1, decode_record, partition_for)
        folded = log_records(records)
        began, cpu = time.perf_counter(), time.thread_time()
        fold_all(projector, folded)
        elapsed, cpu = time.perf_counter() - began, time.thread_time() - cpu
        store.close()
    return len(records) / elapsed, len(records) / cpu


class Spinner:
    """A thread that keeps counting in Python: a call into an extension that holds the GIL
    stops it for as long as the call runs."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        stop = self._stop.is_set
        while not stop():
            self.count += 1

    def __enter__(self) -> Spinner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Commits:
    """What the fold's writes cost on their own (events/s)."""

    node: float
    """The batches of a fold in 500-record batches (the node's), written with the WAL."""
    node_cpu: float
    """The same per second of this thread's CPU time."""
    node_engine: float
    """The same batches built beforehand: ``Rdict.write`` alone, RocksDB's own work."""
    rebuild_engine: float
    """``Rdict.write`` of a rebuild's batches (10,000 records, bulk load), flush included."""
    gil_share: float
    """:func:`gil_share_during_write`."""


def bench_commits(records: Encoded) -> Commits:
    """The RocksDB writes of a fold of ``records``, captured and written again into fresh
    stores: a ceiling for any fold committing through rocksdict, which holds the GIL through
    ``Rdict.write`` (no other thread of the process runs Python meanwhile)."""
    n = len(records)
    with tempfile.TemporaryDirectory() as d:
        capture = CapturingStore(Path(d) / "capture")
        fold_all(Projector(capture, TOPIC, 1, decode_record, partition_for), log_records(records))
        capture.close()
        store = ProjectionStore(Path(d) / "p")
        began, cpu = time.perf_counter(), time.thread_time()
        for changes, meta in capture.batches:
            store.write(changes, meta)
        elapsed, cpu = time.perf_counter() - began, time.thread_time() - cpu
        store.close()
        node_engine = _engine_seconds(ProjectionStore(Path(d) / "q"), capture.batches)
        bulk = ProjectionStore(Path(d) / "r", bulk_load=True)
        rebuild_engine = _engine_seconds(bulk, merged(capture.batches, 20))
        share = gil_share_during_write(capture.batches, Path(d) / "raw")
    return Commits(n / elapsed, n / cpu, n / node_engine, n / rebuild_engine, share)


def merged(batches: list[Captured], group: int) -> list[Captured]:
    """Every ``group`` batches as one, later writes winning: what a fold in batches ``group``
    times larger writes (its overlay keeps the latest value of every key it touched)."""
    out: list[Captured] = []
    for i in range(0, len(batches), group):
        changes: dict[str, dict[bytes, bytes | None]] = {}
        meta: dict[bytes, bytes | None] = {}
        for part, part_meta in batches[i : i + group]:
            for cf, pairs in part.items():
                changes.setdefault(cf, {}).update(pairs)
            meta.update(part_meta)
        out.append((changes, meta))
    return out


def _engine_seconds(store: ProjectionStore, batches: list[Captured]) -> float:
    """Seconds ``store`` takes to commit ``batches`` built beforehand; for a bulk load also to
    close, which flushes its memtables (the only copy of its writes)."""
    built = [store.batch(changes, meta) for changes, meta in batches]
    began = time.perf_counter()
    for wb in built:
        store.commit(wb)
    if store.bulk_load:
        store.close()
    elapsed = time.perf_counter() - began
    if not store.bulk_load:
        store.close()
    return elapsed


def gil_share_during_write(batches: list[Captured], path: Path) -> float:
    """How fast another thread runs Python while this one is inside one ``Rdict.write`` (all
    of ``batches`` as one batch, built beforehand), as a share of its speed with this thread
    asleep: about 1.0 if the write lets go of the GIL (this machine has two cores), about 0
    if it holds it."""
    store = ProjectionStore(path)
    ((changes, meta),) = merged(batches, len(batches))
    wb = store.batch(changes, meta)
    with Spinner() as spinner:
        time.sleep(0.05)  # let it get going
        spun, began = spinner.count, time.perf_counter()
        time.sleep(0.25)
        alone = (spinner.count - spun) / (time.perf_counter() - began)
        spun, began = spinner.count, time.perf_counter()
        store.commit(wb)
        during = (spinner.count - spun) / (time.perf_counter() - began)
    store.close()
    return during / alone


async def fill(
    log: EventLog, records: list[tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]]
) -> None:
    await log.ensure_topic(TOPIC, 1, {"cleanup.policy": "delete"})
    window = 2000
    for i in range(0, len(records), window):
        await asyncio.gather(
            *(
                log.append(TOPIC, 0, k, v, h, timeout_ms=30_000)
                for k, v, h in records[i : i + window]
            )
        )


async def bench_rebuild(
    log: EventLog, records: Encoded, workdir: Path
) -> tuple[float, float, float]:
    """(append events/s, rebuild events/s wall-clock, rebuild events/s of process CPU time)."""
    await log.start()
    try:
        began = time.perf_counter()
        await fill(log, records)
        fill_rate = len(records) / (time.perf_counter() - began)
        began, cpu = time.perf_counter(), time.process_time()
        folded, _, stalled = await replay(log, TOPIC, workdir / "projection.new")
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        assert not stalled, stalled
        assert folded == len(records), (folded, len(records))
    finally:
        await log.close()
    return fill_rate, folded / elapsed, folded / cpu


def rate(wall: float, cpu: float) -> str:
    return f"{wall:,.0f} events/s  (CPU time: {cpu:,.0f} events/s)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--kafka", help="also rebuild from this Kafka bootstrap")
    args = ap.parse_args()
    from sockudo.log.embedded import EmbeddedLog

    records = make_records(args.events)
    rows = [
        ("fold (decode+fold+commit, in memory)", rate(*bench_fold(records))),
    ]
    commits = bench_commits(records)
    rows += [
        ("commits alone, as the node folds", rate(commits.node, commits.node_cpu)),
        (
            "  of which Rdict.write",
            f"{commits.node_engine:,.0f} events/s; meanwhile other Python threads ran at "
            f"{commits.gil_share:.0%}",
        ),
        ("Rdict.write of a rebuild's commits", f"{commits.rebuild_engine:,.0f} events/s"),
    ]
    with tempfile.TemporaryDirectory() as d:
        _, wall, cpu = asyncio.run(bench_rebuild(EmbeddedLog(Path(d) / "log"), records, Path(d)))
        rows.append((f"rebuild of {args.events:,} events (embedded)", rate(wall, cpu)))
    if args.kafka:
        from sockudo.log.kafka import KafkaLog

        global TOPIC
        TOPIC = f"bench{uuid.uuid4().hex[:6]}.channel-events"
        with tempfile.TemporaryDirectory() as d:
            _, wall, cpu = asyncio.run(bench_rebuild(KafkaLog(args.kafka), records, Path(d)))
            rows.append((f"rebuild of {args.events:,} events (kafka)", rate(wall, cpu)))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
