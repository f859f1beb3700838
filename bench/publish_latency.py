"""Publish-to-serial latency: a signed ``POST /events`` against a real node until the answer
carries the fold's serial (append + fold wait + response), on each log backend.

    python bench/publish_latency.py [--n 2000] [--concurrency 8] [--kafka HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sockudo.auth import signed_query_params
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess


async def measure(base_url: str, n: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    path = f"/apps/{APP_ID}/events"
    counter = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            body = json.dumps(
                {
                    "name": "bench",
                    "channel": f"room-{i % 50}",
                    "data": "x" * 100,
                    "info": "user_count",
                }
            ).encode()
            params = signed_query_params(
                APP_KEY, APP_SECRET, "POST", path, timestamp=int(time.time()), body=body
            )
            began = time.perf_counter()
            r = await client.post(path, params=params, content=body)
            latencies.append(time.perf_counter() - began)
            if r.status_code != 200:
                raise RuntimeError(f"publish failed: {r.status_code} {r.text}")

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "n": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "publishes_per_s": len(latencies) / elapsed,
    }


def run(backend: str, bootstrap: str | None, n: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        node = NodeProcess(
            Path(d) / "node",
            log_backend=backend,
            kafka_bootstrap=bootstrap,
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}",
            channel_partitions=3 if backend == "kafka" else None,
        )
        node.start()
        try:
            return asyncio.run(measure(node.base_url, n, concurrency))
        finally:
            node.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--kafka", help="Kafka bootstrap servers to also measure")
    args = ap.parse_args()
    rows = [("embedded", run("embedded", None, args.n, args.concurrency))]
    if args.kafka:
        rows.append(("kafka", run("kafka", args.kafka, args.n, args.concurrency)))
    print(f"{'backend':<10} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'publishes/s':>12}")
    for name, r in rows:
        print(
            f"{name:<10} {r['n']:>6.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['publishes_per_s']:>12,.0f}"
        )


if __name__ == "__main__":
    main()
