"""History page reads per second: signed ``GET …/history?limit=100`` against a real node.

Fills one channel with ``--messages`` publishes (batches of 10), then reads pages of 100 over
``--concurrency`` keep-alive connections for ``--seconds``, walking the cursor and wrapping at
the end. Issue 4's figure: ≥ 2,000 pages/s.

The node and the client share the machine, so the client is kept lean: ``--processes`` worker
processes, each driving its share of the connections from threads over plain blocking sockets
(HTTP/1.1, one request in flight per connection). Every page is signed afresh and read in full
(its ``Content-Length``); every page is checked for status 200, its item count (100 unless it
is the last page of the walk) and its envelope (``limit``, ``has_more``, ``next_cursor``, parsed
as JSON), and every ``--verify-every``-th page of a connection is also parsed whole with
``json.loads`` and checked item by item (serials contiguous along the cursor walk, count equal
to the marker count). ``--verify-every 1`` parses every page.

    python bench/history_reads.py [--messages 2000] [--seconds 10] [--concurrency 8]
                                  [--processes 4] [--verify-every 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sockudo.auth import signed_query_params
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess

CHANNEL = "bench-history"
PAGE = 100
HISTORY_PATH = f"/apps/{APP_ID}/channels/{CHANNEL}/history"
ITEM_MARKER = b'"operation_kind":"append"'
"""Once per item; the bench's payloads never contain it (full parses cross-check the count)."""
ENVELOPE_MARKER = b'],"direction":'
"""Where the ``items`` array ends and the rest of the page begins."""


def _signed(
    method: str, path: str, body: bytes = b"", params: dict[str, str] | None = None
) -> dict[str, str]:
    return signed_query_params(
        APP_KEY, APP_SECRET, method, path, timestamp=int(time.time()), body=body, params=params
    )


async def fill(base_url: str, messages: int) -> None:
    path = f"/apps/{APP_ID}/batch_events"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for start in range(0, messages, 10):
            batch = [
                {"channel": CHANNEL, "name": "tick", "data": json.dumps({"i": i, "pad": "x" * 100})}
                for i in range(start, min(start + 10, messages))
            ]
            body = json.dumps({"batch": batch}).encode()
            r = await client.post(path, params=_signed("POST", path, body), content=body)
            r.raise_for_status()


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = bytearray()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf.clear()
        return sock

    def get(self, target: str) -> tuple[int, bytes]:
        """``(status, body)`` of one GET; retried once on a fresh connection if it closed."""
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode()
        for attempt in (0, 1):
            if self.sock is None:
                self.sock = self._connect()
            try:
                self.sock.sendall(request)
                return self._response()
            except ConnectionError:
                # Hypercorn closes a keep-alive connection after a number of requests.
                self.sock.close()
                self.sock = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        self.buf += chunk

    def _response(self) -> tuple[int, bytes]:
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length: int | None = None
        close = False
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                raise RuntimeError(f"unexpected transfer-encoding: {value.strip()}")
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length is None:
            raise RuntimeError("response without content-length")
        start = end + 4
        while len(buf) < start + length:
            self._fill()
        body = bytes(buf[start : start + length])
        del buf[: start + length]
        if close:
            assert self.sock is not None
            self.sock.close()
            self.sock = None
        return status, body


def read_loop(port: int, deadline: float, verify_every: int, out: dict[str, Any]) -> None:
    """Walk the history with one connection until ``deadline``; fill ``out`` with the tally."""
    conn = Connection(port)
    latencies: list[float] = []
    full = 0
    cursor: str | None = None
    expect_next: int | None = None  # serial the next page must start with (newest first)
    n = 0
    while time.perf_counter() < deadline:
        params = {"limit": str(PAGE)}
        if cursor is not None:
            params["cursor"] = cursor
        target = f"{HISTORY_PATH}?{urlencode(_signed('GET', HISTORY_PATH, params=params))}"
        began = time.perf_counter()
        status, body = conn.get(target)
        latencies.append(time.perf_counter() - began)
        if status != 200:
            raise RuntimeError(f"history page answered {status}: {body[:300]!r}")
        count = body.count(ITEM_MARKER)
        split = body.rfind(ENVELOPE_MARKER)
        if not body.startswith(b'{"items":[') or split < 0:
            raise RuntimeError(f"not a history page: {body[:200]!r}")
        envelope = json.loads(b"{" + body[split + 2 :])
        has_more, next_cursor = envelope["has_more"], envelope["next_cursor"]
        if envelope["limit"] != PAGE or count == 0 or (has_more and count != PAGE):
            raise RuntimeError(f"page of {count} items, envelope {envelope}")
        if has_more != (next_cursor is not None):
            raise RuntimeError(f"has_more {has_more} with next_cursor {next_cursor!r}")
        n += 1
        if verify_every and n % verify_every == 0:
            page = json.loads(body)
            serials = [item["serial"] for item in page["items"]]
            first = serials[0]
            if (
                len(serials) != count
                or serials != list(range(first, first - count, -1))
                or (expect_next is not None and first != expect_next)
                or any(item["message"]["serial"] != item["serial"] for item in page["items"])
                or {k: v for k, v in page.items() if k != "items"} != envelope
            ):
                raise RuntimeError(f"page failed full verification: {body[:300]!r}")
            full += 1
        # The serial the next page must start with: the last item of this one minus one.
        last = body.rfind(b'{"stream_id":', 0, split)
        serial_at = body.index(b'"serial":', last) + len(b'"serial":')
        expect_next = int(body[serial_at : body.index(b",", serial_at)]) - 1
        cursor = next_cursor
        if cursor is None:
            expect_next = None  # wrap: start again from the newest page
    out["pages"] = len(latencies)
    out["latencies"] = latencies
    out["full"] = full


def worker(
    port: int,
    connections: int,
    seconds: float,
    verify_every: int,
    ready: Any,
    start: Any,
    results: Any,
) -> None:
    """A client process: ``connections`` threads, each with its own connection."""
    ready.wait()  # everyone imported and connected lazily; the clock starts together
    start.wait()
    cpu0 = time.process_time()
    deadline = time.perf_counter() + seconds
    tallies: list[dict[str, Any]] = [{} for _ in range(connections)]
    errors: list[BaseException] = []

    def run(out: dict[str, Any]) -> None:
        try:
            read_loop(port, deadline, verify_every, out)
        except BaseException as exc:  # reported to the parent, which fails the run
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in tallies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        results.put({"error": repr(errors[0])})
        return
    results.put(
        {
            "pages": sum(t["pages"] for t in tallies),
            "full": sum(t["full"] for t in tallies),
            "latencies": [x for t in tallies for x in t["latencies"]],
            "cpu": time.process_time() - cpu0,
        }
    )


def read(
    port: int, seconds: float, concurrency: int, processes: int, verify_every: int, node_pid: int
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    ready = ctx.Barrier(processes + 1)
    start = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(port, share, seconds, verify_every, ready, start, results))
        for share in shares
    ]
    for p in procs:
        p.start()
    ready.wait()
    cpu0 = _cpu_seconds(node_pid)
    began = time.perf_counter()
    start.set()
    tallies = [results.get(timeout=seconds + 120) for _ in procs]
    elapsed = time.perf_counter() - began
    node_cpu = (_cpu_seconds(node_pid) - cpu0) / elapsed
    for p in procs:
        p.join()
    failed = [t["error"] for t in tallies if "error" in t]
    if failed:
        raise RuntimeError(f"client failed: {failed[0]}")
    latencies = sorted(x for t in tallies for x in t["latencies"])
    pages = sum(t["pages"] for t in tallies)
    return {
        "pages": pages,
        "pages_per_s": pages / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "fully_parsed_pages": sum(t["full"] for t in tallies),
        "client_processes": processes,
        "node_cpu_cores": round(node_cpu, 2),
        "node_cpu_us_per_page": round(node_cpu * 1e6 * elapsed / max(pages, 1)),
        "client_cpu_cores": round(sum(t["cpu"] for t in tallies) / elapsed, 2),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=8, help="connections in total")
    ap.add_argument("--processes", type=int, default=4, help="client processes")
    ap.add_argument(
        "--verify-every",
        type=int,
        default=8,
        help="parse every N-th page of a connection whole (1: every page, 0: never)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        node = NodeProcess(Path(d) / "node")
        node.start()
        try:
            asyncio.run(fill(node.base_url, args.messages))
            assert node.proc is not None
            r = read(
                node.port,
                args.seconds,
                args.concurrency,
                args.processes,
                args.verify_every,
                node.proc.pid,
            )
        finally:
            node.kill()
    print(json.dumps({"bench": "history_reads", **r}))
    print(
        f"history pages (limit 100, {args.concurrency} connections in {r['client_processes']} "
        f"client processes, embedded): {r['pages_per_s']:,.0f} pages/s, p50 "
        f"{r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms over {r['pages']:.0f} pages "
        f"({r['fully_parsed_pages']} parsed whole); node {r['node_cpu_cores']:.2f} cores, "
        f"{r['node_cpu_us_per_page']} us CPU/page (target >= 2,000 pages/s)"
    )


if __name__ == "__main__":
    main()
