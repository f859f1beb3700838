"""Durable append throughput: 200-byte records, many concurrent appenders, one partition.

    python bench/log_append.py [--records 200000] [--concurrency 1000] [--kafka HOST:PORT]

Embedded runs with ``fsync=always`` (each acknowledged record is synced; appends that arrive
together share one synced write). Kafka runs with the idempotent producer, ``acks=all``.
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

from sockudo.log.base import EventLog


async def measure(log: EventLog, topic: str, records: int, concurrency: int) -> float:
    await log.start()
    try:
        await log.ensure_topic(topic, 1, {"cleanup.policy": "delete"})
        value = b"x" * 200
        remaining = iter(range(records))

        async def appender() -> None:
            for _ in remaining:
                await log.append(topic, 0, b"key", value, timeout_ms=30_000)

        began = time.perf_counter()
        await asyncio.gather(*(appender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        start, end = await log.bounds(topic, 0)
        assert end - start == records, (start, end)
        return records / elapsed
    finally:
        await log.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--kafka", help="Kafka bootstrap servers to also measure")
    args = ap.parse_args()
    from sockudo.log.embedded import EmbeddedLog

    rows = []
    with tempfile.TemporaryDirectory() as d:
        rate = asyncio.run(
            measure(EmbeddedLog(Path(d) / "log"), "bench", args.records, args.concurrency)
        )
        rows.append(("embedded (fsync=always)", rate))
    if args.kafka:
        from sockudo.log.kafka import KafkaLog

        topic = f"bench{uuid.uuid4().hex[:6]}.append"
        rate = asyncio.run(measure(KafkaLog(args.kafka), topic, args.records, args.concurrency))
        rows.append(("kafka (idempotent, acks=all)", rate))
    print(f"{'backend':<30} {'events/s':>12}")
    for name, rate in rows:
        print(f"{name:<30} {rate:>12,.0f}")


if __name__ == "__main__":
    main()
