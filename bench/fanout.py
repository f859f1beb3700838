"""Live fanout through one node on the embedded log: signed ``POST /events`` → N V1 subscribers.

    python bench/fanout.py [--subscribers 1000] [--clients 4] [--duration 10] [--rates 5,500]

Issue targets: ≥ 50,000 deliveries/s; publish→deliver p99 ≤ 50 ms at 500 publishes/s;
≤ 40 KiB of node RSS per idle subscribed connection.

1. Idle memory: node ``VmRSS`` after a warm-up (one socket, one publish) and again once all N
   subscribed sockets sit idle; the difference over N is the cost of one connection.
2. Throughput: ``--publishers`` concurrent keep-alive HTTP connections publish as fast as the
   node answers for ``--duration`` seconds. Publishers stay at most ``--window`` publishes ahead
   of the last subscriber (``0``: open loop), so the node's bounded send queues (1024 frames,
   then close 4100) measure sustained fanout instead of a backlog. Deliveries/s = frames received
   by all subscribers / (last frame received - first publish).
3. Latency: publishes paced at each ``--rates`` value for ``--latency-duration`` seconds (on up
   to ``--paced-connections`` connections; what the node cannot take shows as a lower achieved
   rate). Every payload carries its send time (``time.time_ns``), subscribers take the wall
   clock when the bytes arrive, so publish→deliver covers HTTP, append, fold, fanout and the
   socket. With one channel, 500 publishes/s means 500 x N deliveries/s.

Subscribers are raw WebSocket clients (plain sockets, no library, zero mask key) spread over
``--clients`` processes, each a bare ``epoll`` loop; the last subscriber (asyncio, in this
process) paces the publishers. ``--channels`` spreads the subscribers over that many channels
(publishes go round-robin; the pacing subscriber joins all). CPU per phase comes from ``/proc``
in % of one core: the node (all threads, its event-loop thread, its kernel share), the
subscriber processes, this process, and "other processes" (anything else running skews the
figures: rerun on a quiet machine). A node loop thread near 100 % means the node is the limit.
On a small VM a received frame costs a subscriber ~30-40 µs, two thirds of it kernel (one
loopback segment per frame), so on 2 cores the clients need ~0.6 core per 16k deliveries/s.
``--profile OUT`` runs the node under cProfile (a ``sitecustomize`` on ``PYTHONPATH``, no
server change) and prints its top functions; the figures of such a run are lower.

Prints human lines, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import pstats
import select
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import signed_post
from sockudo.ws import wire as wire_codec
from tests.support.node import APP_ID, APP_KEY, NodeProcess

TARGET_DELIVERIES = 50_000
TARGET_P99_MS = 50.0
TARGET_RATE = 500
TARGET_KIB = 40.0

MARK = b'"data":"@'
"""A bench message on the wire: ``{"event":..,"channel":..,"data":"@<send ns>@xxx"}``."""
EVENT = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROFILE_HOOK = """\
import atexit, cProfile, os
_out = os.environ.get("SOCKUDO_BENCH_PROFILE")
if _out:
    _prof = cProfile.Profile()
    _prof.enable()

    def _dump() -> None:
        _prof.disable()
        _prof.dump_stats(_out)

    atexit.register(_dump)
"""


# --- raw WebSocket subscribers ------------------------------------------------------------------


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame with a zero mask key (legal; the payload is then sent as is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def text(obj: Any) -> bytes:
    return ws_frame(0x1, json.dumps(obj, separators=(",", ":")).encode())


WIRES = ("v1", "json", "msgpack", "protobuf")
_WIRE_NAMES = {"v1": "V1", "json": "V2 json", "msgpack": "V2 msgpack", "protobuf": "V2 protobuf"}
"""``--wire``: V1 (Pusher JSON) or a V2 wire format."""


def upgrade_request(port: int, wire: str = "v1") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    query = "protocol=7" if wire == "v1" else f"protocol=2&format={wire}"
    return (
        f"GET /app/{APP_KEY}?{query}&client=bench&version=1.0 HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Subscribers:
    """The subscriber sockets of one process and what they received since the last reset."""

    def __init__(self, port: int, wire: str = "v1") -> None:
        self.port = port
        self.wire = wire
        self.sockets: list[Wire] = []
        self.subscribed = 0
        self.closed = 0
        self.close_codes: dict[int, int] = {}
        self.errors: list[str] = []
        self.advanced = asyncio.Event()
        """Set whenever a frame arrives or a socket closes (the pacer's publishers wait on it)."""
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.last_recv_ns = 0
        self.samples = array.array("q")

    def error(self, what: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(what)

    def summary(self, samples: bool) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "last_recv_ns": self.last_recv_ns,
            "subscribed": self.subscribed,
            "closed": self.closed,
            "close_codes": dict(self.close_codes),
            "errors": list(self.errors),
            "samples": self.samples.tobytes() if samples else b"",
        }

    async def open(self, plan: list[list[str]], wait_s: float) -> None:
        """asyncio sockets (this process): one per entry of ``plan``, subscribed to those."""
        loop = asyncio.get_running_loop()

        async def one(sub: Sub) -> None:
            await loop.create_connection(lambda: sub, "127.0.0.1", self.port)
            await asyncio.wait_for(sub.ready, wait_s)

        for channels in plan:
            sub = Sub(self, channels)
            try:
                await one(sub)
            except (OSError, TimeoutError) as exc:
                self.error(f"connect: {exc!r}")
            self.sockets.append(sub)

    def close_all(self) -> None:
        for sub in self.sockets:
            sub.close()


class Wire:
    """One V1 subscriber's protocol, without I/O: upgrade, subscribe, count bench frames."""

    def __init__(self, owner: Subscribers, channels: list[str]) -> None:
        self.owner = owner
        self.channels = channels
        self.pending = len(channels)
        self.upgraded = False
        self.live = False
        self.failed: str | None = None
        self.buf = bytearray()

    def write(self, frame: bytes) -> None:
        raise NotImplementedError

    def shut(self) -> None:
        raise NotImplementedError

    def subscribed(self) -> None:
        """Every channel answered ``subscription_succeeded``."""

    def fail(self, why: str) -> None:
        self.failed = why
        self.owner.error(why)
        self.shut()

    def feed(self, data: bytes, now: int) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.fail(f"upgrade refused: {bytes(buf[:head_end])!r}")
                return
            del buf[: head_end + 4]
            self.upgraded = True
        owner = self.owner
        pos, n = 0, len(buf)
        while n - pos >= 2:
            size = buf[pos + 1] & 0x7F
            start = pos + 2
            if size == 126:
                if n - pos < 4:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif size == 127:
                if n - pos < 10:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + size
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x1:
                mark = buf.find(MARK, start, end)
                if mark >= 0:
                    at = mark + len(MARK)
                    owner.samples.append(now - int(buf[at : buf.index(b"@", at)]))
                    owner.frames += 1
                    owner.last_recv_ns = now
                else:
                    self.control(bytes(buf[start:end]))
            elif opcode == 0x2:
                # msgpack/protobuf carry the data string raw: "@<19-digit send ns>@".
                mark = buf.find(b"@", start, end)
                if mark >= 0 and buf[mark + 20 : mark + 21] == b"@":
                    owner.samples.append(now - int(buf[mark + 1 : mark + 20]))
                    owner.frames += 1
                    owner.last_recv_ns = now
                else:
                    self.control(bytes(buf[start:end]))
            elif opcode == 0x8:
                code = int.from_bytes(buf[start : start + 2], "big") if size >= 2 else 1005
                owner.close_codes[code] = owner.close_codes.get(code, 0) + 1
                self.close()
            elif opcode == 0x9:
                self.write(ws_frame(0xA, bytes(buf[start:end])))
            pos = end
        del buf[:pos]

    def control(self, payload: bytes) -> None:
        wire = self.owner.wire
        if wire == "v1":
            msg = json.loads(payload)
            event, data = str(msg.get("event")), msg.get("data")
        else:
            env = wire_codec.decode(payload, cast(Any, wire))
            event = str(env.event)
            data = env.data.to_value() if env.data is not None else None
        name = event.partition(":")[2]
        if name == "connection_established":
            for channel in self.channels:
                self.send_event("subscribe", {"channel": channel})
        elif name == "subscription_succeeded":
            self.pending -= 1
            if self.pending == 0 and not self.live:
                self.live = True
                self.owner.subscribed += 1
                self.subscribed()
        elif name == "ping":
            self.send_event("pong", {})
        elif name == "error":
            self.owner.error(f"{event} {data}")
            if not self.live:
                self.fail(f"{event} {data}")

    def send_event(self, name: str, data: dict[str, Any]) -> None:
        wire = self.owner.wire
        if wire == "v1":
            self.write(text({"event": f"pusher:{name}", "data": data}))
            return
        env = wire_codec.Envelope(event=f"sockudo:{name}", data=wire_codec.Data.of_value(data))
        frame = wire_codec.encode(env, cast(Any, wire))
        if isinstance(frame, str):
            self.write(ws_frame(0x1, frame.encode()))
        else:
            self.write(ws_frame(0x2, frame))

    def close(self) -> None:
        self.write(ws_frame(0x8, (1000).to_bytes(2, "big")))
        self.shut()

    def lost(self) -> None:
        if self.live:
            self.live = False
            self.owner.subscribed -= 1
            self.owner.closed += 1


class Sub(Wire, asyncio.Protocol):
    """A subscriber on this process's event loop (the pacer, the warm-up socket)."""

    def __init__(self, owner: Subscribers, channels: list[str]) -> None:
        super().__init__(owner, channels)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(upgrade_request(self.owner.port, self.owner.wire))

    def data_received(self, data: bytes) -> None:
        self.feed(data, time.time_ns())
        self.owner.advanced.set()

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def shut(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def subscribed(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        super().fail(why)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost()
        self.owner.advanced.set()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before subscribed: {exc!r}"))


class RawSub(Wire):
    """A subscriber in a client process: a plain socket, read from a bare ``epoll`` loop."""

    def __init__(self, owner: Subscribers, channels: list[str]) -> None:
        super().__init__(owner, channels)
        self.sock = socket.create_connection(("127.0.0.1", owner.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.open = True

    def handshake(self) -> None:
        """Blocking: upgrade and subscribe, then switch to non-blocking reads."""
        self.sock.sendall(upgrade_request(self.owner.port, self.owner.wire))
        while not self.live and self.failed is None and self.open:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before subscribed")
            self.feed(data, time.time_ns())
        if self.failed is not None:
            raise ConnectionError(self.failed)
        self.sock.setblocking(False)

    def write(self, frame: bytes) -> None:
        if self.open:
            with contextlib.suppress(OSError):
                self.sock.sendall(frame)

    def shut(self) -> None:
        if self.open:
            self.open = False
            self.sock.close()


def client_main(conn: Connection, port: int, plan: list[list[str]], wire: str = "v1") -> None:
    """A subscriber process: open ``plan`` one socket at a time, then read until ``stop``.

    A bare ``epoll`` loop costs a received frame far less than asyncio's callback machinery,
    which keeps the subscribers out of the node's way on a small machine.
    """
    subs = Subscribers(port, wire)
    by_fd: dict[int, RawSub] = {}
    for channels in plan:
        try:
            new = RawSub(subs, channels)
            new.handshake()
        except OSError as exc:
            subs.error(f"connect: {exc!r}")
            continue
        by_fd[new.sock.fileno()] = new
        subs.sockets.append(new)
    conn.send(subs.summary(samples=False))
    poller = select.epoll()
    poller.register(conn.fileno(), select.EPOLLIN)
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    running = True
    while running:
        for fd, _ in poller.poll():
            sub = by_fd.get(fd)
            if sub is None:
                try:
                    cmd = conn.recv()
                except EOFError:
                    cmd = "stop"
                if cmd == "reset":
                    subs.reset()
                elif cmd in ("peek", "report"):
                    conn.send(subs.summary(samples=cmd == "report"))
                else:
                    running = False
                continue
            try:
                data = sub.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                sub.feed(data, time.time_ns())
            if not data or not sub.open:
                with contextlib.suppress(OSError):  # already gone if the socket was closed
                    poller.unregister(fd)
                del by_fd[fd]
                sub.shut()
                sub.lost()
    subs.close_all()


@dataclass
class Client:
    proc: multiprocessing.process.BaseProcess
    conn: Connection

    async def ask(self, cmd: str) -> dict[str, Any]:
        self.conn.send(cmd)
        return cast(dict[str, Any], await asyncio.to_thread(self.conn.recv))


# --- publishers ---------------------------------------------------------------------------------


class Publisher:
    """One keep-alive HTTP/1.1 connection sending signed ``POST /events``."""

    PATH = f"/apps/{APP_ID}/events"

    def __init__(self, port: int, pad: str) -> None:
        self.port = port
        self.pad = pad
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0.0

    IDLE_S = 2.0
    """Reconnect after this long unused: the server drops idle keep-alive connections (5 s)."""

    async def connect(self) -> Publisher:
        await self.close()
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.used = time.monotonic()
        return self

    async def publish(self, channel: str) -> float:
        """Publish one message; returns the HTTP round trip in seconds."""
        if self.writer is None or time.monotonic() - self.used > self.IDLE_S:
            await self.connect()
        try:
            return await self._publish(channel)
        finally:
            self.used = time.monotonic()

    async def _publish(self, channel: str) -> float:
        assert self.reader is not None
        assert self.writer is not None
        sent_ns = time.time_ns()
        body = json.dumps(
            {"name": EVENT, "channel": channel, "data": f"@{sent_ns}@{self.pad}"},
            separators=(",", ":"),
        ).encode()
        await signed_post(self.reader, self.writer, self.port, self.PATH, body, sent_ns // 10**9)
        return (time.time_ns() - sent_ns) / 1e9

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


# --- /proc --------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(stat_path: str, system_only: bool = False) -> float:
    """utime + stime (or stime alone) of ``/proc/.../stat`` in seconds; 0 once it is gone."""
    try:
        fields = Path(stat_path).read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[12]) + (0 if system_only else int(fields[11]))) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds all processes spent busy (``/proc/stat``: not idle, not iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class CpuMeter:
    """CPU use per phase, in % of one core: the node (all threads), its event-loop thread and
    the kernel share of it, the subscriber processes, this process (publishers, pacer)."""

    node_pid: int
    client_pids: list[int]

    def snapshot(self) -> dict[str, float]:
        node = f"/proc/{self.node_pid}/stat"
        return {
            "wall": time.monotonic(),
            "node": cpu_s(node),
            "node_loop": cpu_s(f"/proc/{self.node_pid}/task/{self.node_pid}/stat"),
            "node_kernel": cpu_s(node, system_only=True),
            "clients": sum(cpu_s(f"/proc/{pid}/stat") for pid in self.client_pids),
            "clients_kernel": sum(
                cpu_s(f"/proc/{pid}/stat", system_only=True) for pid in self.client_pids
            ),
            "publisher": cpu_s("/proc/self/stat"),
            "machine": machine_busy_s(),
        }

    @staticmethod
    def percent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        wall = after["wall"] - before["wall"]
        out = {k: round(100 * (after[k] - v) / wall, 1) for k, v in before.items() if k != "wall"}
        # Whatever else ran meanwhile (other test suites, a broker) skews every figure.
        out["other"] = round(out["machine"] - out["node"] - out["clients"] - out["publisher"], 1)
        return out


# --- the benchmark ------------------------------------------------------------------------------


def percentiles_ms(samples: list[int]) -> dict[str, float]:
    if not samples:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    samples.sort()
    return {
        "p50_ms": round(samples[len(samples) // 2] / 1e6, 2),
        "p99_ms": round(samples[max(0, int(len(samples) * 0.99) - 1)] / 1e6, 2),
        "max_ms": round(samples[-1] / 1e6, 2),
    }


class Bench:
    def __init__(self, node: NodeProcess, args: argparse.Namespace) -> None:
        self.node = node
        self.args = args
        self.channels = [f"fanout-{i}" for i in range(args.channels)]
        self.clients: list[Client] = []
        self.pacer = Subscribers(node.port, args.wire)
        self.publishers: list[Publisher] = []
        self.meter = CpuMeter(0, [])
        self.subs_on: dict[str, int] = {}
        self.pad = ""

    async def run(self) -> dict[str, Any]:
        args, node = self.args, self.node
        assert node.proc is not None
        n = args.subscribers
        self.pad = "x" * max(0, args.payload_bytes - 22)
        await self.connect_publishers()
        # Warm-up: one socket and one publish load the code paths and the first allocations.
        warm = Subscribers(node.port, self.args.wire)
        await warm.open([self.channels[:1]], 30.0)
        await self.publishers[0].publish(self.channels[0])
        await asyncio.sleep(0.5)
        warm.close_all()
        await self.close_publishers()  # idle keep-alive connections time out meanwhile
        await asyncio.sleep(1.0)
        rss_before = rss_kib(node.proc.pid)

        plan = [[self.channels[i % len(self.channels)]] for i in range(n - 1)]
        self.subs_on = {c: sum(1 for p in plan if p[0] == c) + 1 for c in self.channels}
        began = time.monotonic()
        ctx = multiprocessing.get_context("spawn")
        for k in range(args.clients):
            mine = plan[k :: args.clients]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(child, node.port, mine, self.args.wire))
            proc.start()
            self.clients.append(Client(proc, parent))
        progress(f"{args.clients} subscriber processes connecting {n - 1} sockets")
        ready = [await asyncio.to_thread(c.conn.recv) for c in self.clients]
        # The pacing subscriber joins last, so it is last in every fanout.
        await self.pacer.open([self.channels], 30.0)
        connect_s = time.monotonic() - began
        subscribed = sum(r["subscribed"] for r in ready) + self.pacer.subscribed
        errors = [e for r in ready for e in r["errors"]] + self.pacer.errors
        if subscribed < n:
            raise RuntimeError(f"only {subscribed}/{n} subscribed: {errors[:5]}")
        progress(f"{subscribed} subscribed in {connect_s:.1f} s; idle {args.settle} s")
        self.meter = CpuMeter(node.proc.pid, [c.proc.pid or 0 for c in self.clients])
        cpu0 = self.meter.snapshot()
        await asyncio.sleep(args.settle)
        rss_after = rss_kib(node.proc.pid)
        idle = {
            "wire": args.wire,
            "subscribers": n,
            "connect_s": round(connect_s, 2),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "kib_per_connection": round((rss_after - rss_before) / n, 2),
            "node_cpu_percent": CpuMeter.percent(cpu0, self.meter.snapshot())["node"],
        }
        throughput = await self.phase("throughput", self.flood)
        throughput["rss_after_kib"] = rss_kib(node.proc.pid)
        latency = []
        for rate in args.rates:
            latency.append(
                await self.phase(f"paced {rate:g}/s", lambda r=rate: self.paced(r), rate)
            )
        for c in self.clients:
            c.conn.send("stop")
        for c in self.clients:
            await asyncio.to_thread(c.proc.join, 10)
        self.pacer.close_all()
        return {"idle": idle, "throughput": throughput, "latency": latency}

    async def phase(self, name: str, publish: Any, rate: float | None = None) -> dict[str, Any]:
        """Reset counters, publish, wait for the fanout to drain, collect every client."""
        progress(f"phase {name}")
        await self.connect_publishers()
        live = sum(r["subscribed"] for r in await self.ask_all("peek"))
        await self.ask_all("reset")
        cpu0 = self.meter.snapshot()
        t0_ns = time.time_ns()
        began = time.monotonic()
        published, rtts = await publish()
        publish_s = time.monotonic() - began
        await self.close_publishers()
        sent = len(published)
        expected = sum(self.subs_on[c] for c in published)
        await self.drain(expected)
        cpu1 = self.meter.snapshot()  # before the reports: shipping samples costs CPU too
        reports = await self.ask_all("report")
        last_ns = max(r["last_recv_ns"] for r in reports) or time.time_ns()
        frames = sum(r["frames"] for r in reports)
        samples: list[int] = []
        for r in reports:
            samples.extend(array.array("q", r["samples"]))
        deliver_s = max(1e-9, (last_ns - t0_ns) / 1e9)
        rtts.sort()
        return {
            "phase": name,
            "live_subscribers": live,
            "publishes": sent,
            "offered_per_s": rate,
            "publish_s": round(publish_s, 2),
            "publishes_per_s": round(sent / publish_s, 1),
            "publish_rtt_p50_ms": round(rtts[len(rtts) // 2] * 1000, 2) if rtts else None,
            "publish_rtt_p99_ms": (
                round(rtts[max(0, int(len(rtts) * 0.99) - 1)] * 1000, 2) if rtts else None
            ),
            "delivered": frames,
            "expected": expected,
            "deliver_s": round(deliver_s, 2),
            "deliveries_per_s": round(frames / deliver_s),
            **percentiles_ms(samples),
            "closed": sum(r["closed"] for r in reports),
            "close_codes": _merge([r["close_codes"] for r in reports]),
            "cpu_percent": CpuMeter.percent(cpu0, cpu1),
        }

    async def connect_publishers(self) -> None:
        self.publishers = [
            await Publisher(self.node.port, self.pad).connect() for _ in range(self.args.publishers)
        ]

    async def close_publishers(self) -> None:
        for p in self.publishers:
            await p.close()
        self.publishers = []

    async def ask_all(self, cmd: str) -> list[dict[str, Any]]:
        """``peek``/``report`` of every subscriber process and the pacer; ``reset`` them."""
        if cmd == "reset":  # no answer
            for c in self.clients:
                c.conn.send(cmd)
            self.pacer.reset()
            return []
        answers = list(await asyncio.gather(*(c.ask(cmd) for c in self.clients)))
        return [*answers, self.pacer.summary(samples=cmd == "report")]

    async def drain(self, expected: int) -> None:
        """Until every expected frame arrived or nothing arrived for a second (or 60 s)."""
        deadline = time.monotonic() + 60.0
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            total = sum(r["frames"] for r in await self.ask_all("peek"))
            if total >= expected:
                return
            if total != last:
                last, quiet_since = total, time.monotonic()
            elif time.monotonic() - quiet_since > 1.0:
                return
            await asyncio.sleep(0.1)

    async def flood(self) -> tuple[list[str], list[float]]:
        """Every publisher back to back for ``--duration``, within ``--window`` of the pacer."""
        window = self.args.window
        stop_at = time.monotonic() + self.args.duration
        published: list[str] = []
        rtts: list[float] = []

        async def worker(pub: Publisher) -> None:
            while time.monotonic() < stop_at:
                while (
                    window
                    and len(published) - self.pacer.frames >= window
                    and self.pacer.subscribed
                ):
                    self.pacer.advanced.clear()
                    await self.pacer.advanced.wait()
                channel = self.channels[len(published) % len(self.channels)]
                published.append(channel)
                rtts.append(await pub.publish(channel))

        await asyncio.gather(*(worker(p) for p in self.publishers))
        return published, rtts

    async def paced(self, rate: float) -> tuple[list[str], list[float]]:
        """``rate`` publishes/s on schedule for ``--latency-duration``, each on a free connection.

        Connections are added up to ``--paced-connections``; a publish still waiting for one
        when the time is up is skipped, so a node that answers slower than the rate shows as a
        lower achieved rate, not as a longer phase.
        """
        duration = self.args.latency_duration
        free: asyncio.LifoQueue[Publisher] = asyncio.LifoQueue()  # reuse the warm ones
        for p in self.publishers:
            free.put_nowait(p)
        published: list[str] = []
        rtts: list[float] = []
        began = time.monotonic()
        stop_at = began + duration

        async def one(channel: str) -> None:
            if free.empty() and len(self.publishers) < self.args.paced_connections:
                # Open another connection rather than fall behind the schedule.
                new = Publisher(self.node.port, self.pad)
                self.publishers.append(new)
                free.put_nowait(await new.connect())
            pub = await free.get()
            try:
                if time.monotonic() < stop_at:
                    published.append(channel)
                    rtts.append(await pub.publish(channel))
            finally:
                free.put_nowait(pub)

        tasks = []
        for i in range(int(rate * duration)):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            channel = self.channels[i % len(self.channels)]
            tasks.append(asyncio.create_task(one(channel)))
        await asyncio.gather(*tasks)
        return published, rtts


def progress(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def _merge(counts: list[dict[int, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for c in counts:
        for code, k in c.items():
            merged[str(code)] = merged.get(str(code), 0) + k
    return merged


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    idle, tp = result["idle"], result["throughput"]

    def ok(good: bool) -> str:
        return "ok" if good else "MISSED"

    print(
        f"fanout: {idle['subscribers']} {_WIRE_NAMES[args.wire]} subscribers on "
        f"{args.channels} channel(s), "
        f"{args.clients} client processes + 1 pacing socket, embedded log, "
        f"{args.payload_bytes}-byte data; connected in {idle['connect_s']} s"
    )
    print(
        f"idle memory: node RSS {idle['rss_before_kib']:,} KiB -> {idle['rss_after_kib']:,} KiB "
        f"= {idle['kib_per_connection']:.1f} KiB/connection "
        f"(target <= {TARGET_KIB:.0f}: {ok(idle['kib_per_connection'] <= TARGET_KIB)}); "
        f"idle node CPU {idle['node_cpu_percent']}%"
    )
    for row in [tp, *result["latency"]]:
        cpu = row["cpu_percent"]
        line = (
            f"{row['phase']}: {row['publishes']:,} publishes at {row['publishes_per_s']:,.0f}/s "
            f"-> {row['delivered']:,}/{row['expected']:,} delivered, "
            f"{row['deliveries_per_s']:,} deliveries/s; publish->deliver p50 "
            f"{row['p50_ms']} ms p99 {row['p99_ms']} ms max {row['max_ms']} ms; "
            f"HTTP p50 {row['publish_rtt_p50_ms']} ms; closed {row['closed']} "
            f"{row['close_codes'] or ''}; CPU node {cpu['node']}% "
            f"(loop thread {cpu['node_loop']}%, kernel {cpu['node_kernel']}%), "
            f"clients {cpu['clients']}% (kernel {cpu['clients_kernel']}%), "
            f"publishers {cpu['publisher']}%, other processes {cpu['other']}% "
            f"(of {100 * (os.cpu_count() or 1)}%)"
        )
        if row is tp:
            line += f" (target >= {TARGET_DELIVERIES:,}: "
            line += f"{ok(row['deliveries_per_s'] >= TARGET_DELIVERIES)})"
        elif row["offered_per_s"] == TARGET_RATE:
            good = (
                row["p99_ms"] <= TARGET_P99_MS
                and row["delivered"] == row["expected"]
                and row["publishes_per_s"] >= 0.95 * TARGET_RATE
            )
            line += f" (target p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_RATE}/s: {ok(good)})"
        print(line)
    print(json.dumps({"bench": "fanout", **result}))


def print_profile(path: Path, top: int = 30) -> None:
    print(f"node profile: {path} (top {top} by own time)", file=sys.stderr)
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4, help="subscriber processes")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--wire", choices=WIRES, default="v1", help="subscribers' protocol/format")
    ap.add_argument("--publishers", type=int, default=32, help="HTTP connections of the flood")
    ap.add_argument(
        "--paced-connections", type=int, default=64, help="HTTP connections a paced phase may open"
    )
    ap.add_argument("--duration", type=float, default=10.0, help="throughput phase, seconds")
    ap.add_argument("--window", type=int, default=200, help="publishes ahead; 0 = open loop")
    ap.add_argument(
        "--rates",
        type=lambda s: [float(r) for r in s.split(",") if r],
        default=[5.0, float(TARGET_RATE)],
        help=(
            "comma-separated paced publish rates (per second) for the latency phases; the "
            "default 5 is light load (5,000 deliveries/s at 1,000 subscribers), 500 the target"
        ),
    )
    ap.add_argument("--latency-duration", type=float, default=10.0)
    ap.add_argument("--payload-bytes", type=int, default=100, help="size of the data string")
    ap.add_argument("--settle", type=float, default=3.0, help="idle seconds before RSS")
    ap.add_argument("--profile", type=Path, help="run the node under cProfile, write stats here")
    args = ap.parse_args()
    if args.subscribers < 2:
        ap.error("--subscribers must be at least 2")
    args.clients = max(1, min(args.clients, args.subscribers - 1))
    with tempfile.TemporaryDirectory() as d:
        env: dict[str, str] = {}
        if args.profile is not None:
            hook = Path(d) / "hook"
            hook.mkdir()
            (hook / "sitecustomize.py").write_text(PROFILE_HOOK)
            pythonpath = os.environ.get("PYTHONPATH")
            env["PYTHONPATH"] = str(hook) + (os.pathsep + pythonpath if pythonpath else "")
            env["SOCKUDO_BENCH_PROFILE"] = str(args.profile.resolve())
        node = NodeProcess(Path(d) / "node", extra_env=env)
        node.start()
        try:
            result = asyncio.run(Bench(node, args).run())
            if args.profile is not None:
                node.stop()  # a clean exit runs the hook's atexit dump
        finally:
            node.kill()
    report(result, args)
    if args.profile is not None:
        print_profile(args.profile)


if __name__ == "__main__":
    main()
