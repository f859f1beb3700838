"""Durable append throughput: 200-byte records, N concurrent appenders, one partition.

    python bench/log_append.py [--records 200000] [--concurrency 1000] [--kafka HOST:PORT]

``--concurrency`` takes a comma-separated list (e.g. ``1,100,1000``) for one row each.
Embedded runs with ``fsync=always``: every acknowledged record was synced, and appends that
arrive together share one synced write (the "per fsync" column). Kafka runs with the idempotent
producer, ``acks=all``. Latency is per ``append`` call, from the call to its acknowledgement.
Prints a plain-text table, one row per backend and concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sockudo.log.base import EventLog

VALUE = b"x" * 200


@dataclass
class Row:
    backend: str
    appenders: int
    records: int
    seconds: float
    p50_ms: float
    p99_ms: float
    per_sync: float | None


async def measure(log: EventLog, backend: str, topic: str, records: int, appenders: int) -> Row:
    await log.start()
    try:
        await log.ensure_topic(topic, 1, {"cleanup.policy": "delete"})
        await log.append(topic, 0, b"key", VALUE, timeout_ms=30_000)  # warm up connections
        _, base = await log.bounds(topic, 0)
        before = getattr(log, "sync_batches", None)
        remaining = iter(range(records))
        latencies: list[float] = []
        clock = time.perf_counter

        async def appender() -> None:
            for _ in remaining:
                t0 = clock()
                await log.append(topic, 0, b"key", VALUE, timeout_ms=30_000)
                latencies.append(clock() - t0)

        began = clock()
        await asyncio.gather(*(appender() for _ in range(appenders)))
        elapsed = clock() - began
        start, end = await log.bounds(topic, 0)
        assert end - base == records, (start, base, end)
        after = getattr(log, "sync_batches", None)
        synced = None if before is None or after is None else after - before
        cuts = statistics.quantiles(latencies, n=100)
        return Row(
            backend,
            appenders,
            records,
            elapsed,
            cuts[49] * 1000,
            cuts[98] * 1000,
            records / synced if synced else None,
        )
    finally:
        await log.close()


async def delete_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--concurrency", default="1000", help="appenders, e.g. 1,100,1000")
    ap.add_argument("--kafka", help="Kafka bootstrap servers to also measure")
    args = ap.parse_args()
    from sockudo.log.embedded import EmbeddedLog

    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    for n in levels:
        with tempfile.TemporaryDirectory() as d:
            log = EmbeddedLog(Path(d) / "log", fsync="always")
            rows.append(
                asyncio.run(measure(log, "embedded fsync=always", "bench", args.records, n))
            )
    if args.kafka:
        from sockudo.log.kafka import KafkaLog

        for n in levels:
            topic = f"bench{uuid.uuid4().hex[:6]}.append"
            log = KafkaLog(args.kafka)
            try:
                rows.append(asyncio.run(measure(log, "kafka acks=all", topic, args.records, n)))
            finally:
                asyncio.run(delete_topic(args.kafka, topic))

    header = (
        f"{'backend':<24} {'appenders':>9} {'records':>9} {'seconds':>8} "
        f"{'events/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'per fsync':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        per_sync = "-" if r.per_sync is None else f"{r.per_sync:.0f}"
        print(
            f"{r.backend:<24} {r.appenders:>9} {r.records:>9} {r.seconds:>8.2f} "
            f"{r.records / r.seconds:>10,.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {per_sync:>9}"
        )


if __name__ == "__main__":
    main()
