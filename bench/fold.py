"""Fold and rebuild throughput: decode + fold + commit of channel events, no fanout.

    python bench/fold.py --events 1000000 [--kafka HOST:PORT]

Prints a table: the fold alone (records already in memory) and ``rebuild`` (the same records
replayed from a log into a fresh projection, as ``sockudo-tools rebuild`` does). Each rate is
wall-clock; the CPU-time rate next to it (the fold thread alone, or the whole process for a
rebuild) is what the code costs when other work shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
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


def bench_fold(records: Encoded) -> tuple[float, float]:
    """(events/s wall-clock, events/s of the folding thread's CPU time)."""
    with tempfile.TemporaryDirectory() as d:
        store = ProjectionStore(Path(d) / "p")
        projector = Projector(store, TOPIC, 1, decode_record, partition_for)
        log_records = [
            LogRecord(TOPIC, 0, i, 1_700_000_000_000 + i // 10, k, v, h)
            for i, (k, v, h) in enumerate(records)
        ]
        began, cpu = time.perf_counter(), time.thread_time()
        for i in range(0, len(log_records), 500):
            projector.apply(log_records[i : i + 500], {0: min(i + 500, len(log_records))})
        elapsed, cpu = time.perf_counter() - began, time.thread_time() - cpu
        store.close()
    return len(records) / elapsed, len(records) / cpu


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
    rows = [("fold (decode+fold+commit, in memory)", rate(*bench_fold(records)))]
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
