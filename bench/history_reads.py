"""History page reads per second: signed ``GET …/history?limit=100`` against a real node.

Fills one channel with ``--messages`` publishes (batches of 10), then reads pages of 100 with
``--concurrency`` clients for ``--seconds``, walking the cursor and wrapping at the end.
Issue 4's figure: ≥ 2,000 pages/s.

    python bench/history_reads.py [--messages 2000] [--seconds 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sockudo.auth import signed_query_params
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess

CHANNEL = "bench-history"


def _signed(
    method: str, path: str, body: bytes = b"", params: dict[str, str] | None = None
) -> dict[str, str]:
    return signed_query_params(
        APP_KEY, APP_SECRET, method, path, timestamp=int(time.time()), body=body, params=params
    )


async def fill(client: httpx.AsyncClient, messages: int) -> None:
    path = f"/apps/{APP_ID}/batch_events"
    for start in range(0, messages, 10):
        batch = [
            {"channel": CHANNEL, "name": "tick", "data": json.dumps({"i": i, "pad": "x" * 100})}
            for i in range(start, min(start + 10, messages))
        ]
        body = json.dumps({"batch": batch}).encode()
        r = await client.post(path, params=_signed("POST", path, body), content=body)
        r.raise_for_status()


async def read(client: httpx.AsyncClient, seconds: float, concurrency: int) -> dict[str, float]:
    path = f"/apps/{APP_ID}/channels/{CHANNEL}/history"
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        cursor: str | None = None
        while time.perf_counter() < deadline:
            params = {"limit": "100"}
            if cursor is not None:
                params["cursor"] = cursor
            began = time.perf_counter()
            r = await client.get(path, params=_signed("GET", path, params=params))
            latencies.append(time.perf_counter() - began)
            r.raise_for_status()
            page = r.json()
            if len(page["items"]) == 0:
                raise RuntimeError("empty history page")
            cursor = page["next_cursor"]

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "pages": len(latencies),
        "pages_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


async def measure(
    base_url: str, messages: int, seconds: float, concurrency: int
) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        await fill(client, messages)
        return await read(client, seconds, concurrency)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        node = NodeProcess(Path(d) / "node")
        node.start()
        try:
            r = asyncio.run(measure(node.base_url, args.messages, args.seconds, args.concurrency))
        finally:
            node.kill()
    print(json.dumps({"bench": "history_reads", **r}))
    print(
        f"history pages (limit 100, {args.concurrency} clients, embedded): "
        f"{r['pages_per_s']:,.0f} pages/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms "
        f"over {r['pages']:.0f} pages (target >= 2,000 pages/s)"
    )


if __name__ == "__main__":
    main()
