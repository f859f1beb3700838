"""Node event-loop CPU per V2 reconnect (resume + subscribe + hot replay), measured from /proc.

    python bench/reconnect_cpu.py [--sockets 500] [--channels 100] [--replay 25] [--rounds 3]

One node on the embedded log. Each channel gets one message, a probe socket learns its
position, then ``--replay`` more messages are published per channel. ``--sockets`` raw V2 JSON
sockets then connect (``--concurrency`` at a time), send ``sockudo:resume`` from the probed
position and ``sockudo:subscribe``, and read until ``sockudo:resume_success``. The figure is
the CPU time (user + system) of the node's main (event-loop) thread during that phase, divided
by the number of sockets; each round reconnects fresh sockets against the same data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import signed_post
from bench.recovery import v2_upgrade_request
from tests.support.node import APP_ID, NodeProcess


def _frame(obj: Any) -> bytes:
    payload = json.dumps(obj, separators=(",", ":")).encode()
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
    return head + b"\0\0\0\0" + payload  # zero mask key: payload unchanged


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    _, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return await reader.readexactly(n)


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(v2_upgrade_request(port))
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def _until(reader: asyncio.StreamReader, event: str) -> tuple[dict[str, Any], int]:
    frames = 0
    while True:
        msg = json.loads(await _read_frame(reader))
        frames += 1
        if msg.get("event") == event:
            return msg, frames


async def _probe(port: int, channel: str) -> dict[str, Any]:
    reader, writer = await _open(port)
    await _until(reader, "sockudo:connection_established")
    writer.write(_frame({"event": "sockudo:subscribe", "data": {"channel": channel, "auth": ""}}))
    msg, _ = await _until(reader, "sockudo_internal:subscription_succeeded")
    writer.close()
    return {"serial": msg["serial"], "stream_id": msg["stream_id"], "last_message_id": None}


async def _resume(port: int, channel: str, position: dict[str, Any]) -> int:
    reader, writer = await _open(port)
    await _until(reader, "sockudo:connection_established")
    resume = {"channel_positions": {channel: position}}
    writer.write(_frame({"event": "sockudo:resume", "data": resume}))
    writer.write(_frame({"event": "sockudo:subscribe", "data": {"channel": channel, "auth": ""}}))
    # The first resume_success lists the channel as pending; the replay follows the subscribe.
    _, frames = await _until(reader, "sockudo_internal:subscription_succeeded")
    msg, more = await _until(reader, "sockudo:resume_success")
    assert json.loads(msg["data"])["recovered"], msg
    writer.close()
    return frames + more


async def _publish(port: int, channels: list[str], per_channel: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    path = f"/apps/{APP_ID}/batch_events"
    for i in range(per_channel):
        for start in range(0, len(channels), 10):
            batch = [
                {"name": "bench", "channel": c, "data": json.dumps({"i": i, "pad": "x" * 100})}
                for c in channels[start : start + 10]
            ]
            body = json.dumps({"batch": batch}).encode()
            await signed_post(reader, writer, port, path, body, int(time.time()))
    writer.close()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def _run(node: NodeProcess, args: argparse.Namespace) -> None:
    port = node.port
    channels = [f"ch-{i}" for i in range(args.channels)]
    await _publish(port, channels, 1)
    await asyncio.sleep(0.5)
    positions = {c: await _probe(port, c) for c in channels}
    await _publish(port, channels, args.replay)
    await asyncio.sleep(1.0)
    assert node.proc is not None
    pid = node.proc.pid
    hz = os.sysconf("SC_CLK_TCK")
    sem = asyncio.Semaphore(args.concurrency)
    spy = None
    if args.spy:
        # Sample the loop thread through the measured rounds only (py-spy, raw folded stacks).
        cmd = [args.py_spy, "record", "--gil", "-r", "500", "-f", "raw", "-o", args.spy]
        spy = await asyncio.create_subprocess_exec(*cmd, "-p", str(pid))
        await asyncio.sleep(1.0)

    async def one(i: int) -> int:
        c = channels[i % len(channels)]
        async with sem:
            return await _resume(port, c, positions[c])

    for r in range(args.rounds):
        before = _cpu_ticks(pid)
        t0 = time.perf_counter()
        frames = await asyncio.gather(*(one(i) for i in range(args.sockets)))
        wall = time.perf_counter() - t0
        cpu = (_cpu_ticks(pid) - before) / hz
        await asyncio.sleep(1.0)
        print(
            f"round {r}: {args.sockets} reconnects, {sum(frames) / len(frames):.1f} frames each, "
            f"loop CPU {cpu * 1000 / args.sockets:.3f} ms/reconnect, wall {wall:.2f} s",
            flush=True,
        )
    if spy is not None:
        spy.send_signal(2)
        await spy.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sockets", type=int, default=500)
    p.add_argument("--channels", type=int, default=100)
    p.add_argument("--replay", type=int, default=25)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--spy", help="write a py-spy raw profile of the rounds here")
    p.add_argument("--py-spy", default="/tmp/spyenv/bin/py-spy")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        node = NodeProcess(Path(d) / "node")
        node.start()
        try:
            asyncio.run(_run(node, args))
            node.stop()
        finally:
            node.kill()


if __name__ == "__main__":
    main()
