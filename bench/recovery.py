"""Connection recovery under load: V2 subscribers drop for 2 s while publishing goes on, resume.

    python bench/recovery.py [--subscribers 1000] [--clients 4] [--channels 100] [--rate 1000]
                             [--batch 1] [--outage 2] [--warmup 3] [--after 3]
                             [--profile OUT]

Issue target: after a 2 s disconnect of 1,000 V2 subscribers while 1,000 messages/s are
published, every client has caught up within 1 s of reconnecting, with zero gaps or duplicates.

One node on the embedded log. ``--subscribers`` raw V2 JSON WebSocket clients (``?protocol=2``,
plain sockets and a zero mask key, read by a bare ``epoll`` loop in each of ``--clients``
processes, as in ``fanout.py``) each subscribe to one of ``--channels`` channels. This process
publishes ``--rate`` messages per second, round-robin over the channels, on up to
``--publishers`` keep-alive connections: by default one signed ``POST /events`` per message,
asking for the channel acknowledgement (``"info":""``) so the bench learns each message's
delivery serial and when it was committed; ``--batch N`` sends ``POST /batch_events`` with N
messages instead (``rate / N`` requests/s; their answers carry no serials, see "caught up"). A
request more than 0.2 s behind its schedule is skipped, so a node that cannot take the rate
shows as a lower achieved rate (printed per phase), never as a backlog.

Phases: warm-up (``--warmup`` s of live traffic); every subscriber closes its TCP socket at once
(no close frame); ``--outage`` s later all reconnect at once (the sockudo-python 2.2.0 client's
first retry has no delay and no jitter) and behave like that client does on reconnect: right
after ``sockudo:connection_established`` it sends ``sockudo:resume`` with ``channel_positions``
``{channel: {serial, stream_id, last_message_id}}`` (the last position it saw on any frame with
``channel`` and ``serial``, updated from ``resume_success`` positions), then
``sockudo:subscribe`` (``auth: ""``). The server parks the resume as pending (spec 02 §7.6) and
on the subscribe sends ``subscription_succeeded`` (attach head A), the replay of ``(P, A]``, a
follow-up ``resume_success``, then live messages ``> A``. On ``resume_failed`` the client drops
its position and subscribes again, like the real client. A socket that fails or is reset is not
retried (it counts as lost, by reason). Publishing continues for ``--after`` s once every client
has settled (or ``--recover-timeout``), then stops; the bench waits until every subscriber holds
every serial up to its channel's final head (or ``--drain-timeout``). About 25-45 s in all.

Caught up (printed with the figures): a client reconnecting at T (when its new TCP connect
starts) with resume position P is caught up at the first instant it has received, on the new
connection, every serial of its channel in ``(P, H_T]``, where ``H_T`` is the highest serial the
node had acknowledged to a publisher on that channel by T -- everything published and committed
before it came back, so the whole outage. With ``--batch``, ``H_T`` is the number of messages
acknowledged on the channel by T: serials follow commit order, so that many are committed (a
lower bound of the head, as the highest acknowledged serial is). reconnect->caught-up = that
instant - T. A client whose resume failed, or that misses any serial of ``(P, H_T]``, is not
caught up. Also reported: reconnect->``connection_established``, ->``subscription_succeeded``,
->``resume_success`` of the channel (replay fully sent) and ->first live message (serial > A),
and caught up counted from ``connection_established`` instead of T: the resume and replay
alone, without the wait for the handshake. The target is read on reconnect->caught up.

Gaps and duplicates cover the whole run, per subscriber: serials of its channel in
``(first attach head, final head]`` never received, and serials received more than once
(across both connections). Resume failures are counted by ``code/reason``.

The hot replay tier keeps ``max_buffer_size`` = 100 messages per channel and a resume whose gap
is larger fails with ``position_expired/recovery_window_exceeded`` (spec 02 §7.3), so the gap per
channel (rate / channels x (outage + reconnect time)) must stay under 100: the default of 100
channels gives 10 messages/s per channel, ~20-30 missed per client, and 10,000 deliveries/s.
(With 10 channels a 2 s outage misses ~200 per channel: every resume fails by design, and 1,000
subscribers would need 100,000 deliveries/s.)

Diagnostics: CPU per phase from ``/proc`` in % of one core, as in ``fanout.py`` (the node, its
event-loop thread and kernel share, the subscriber processes, this process, "other processes":
anything else running skews every figure), plus the time the node's loop thread was runnable but
waiting for a CPU (``schedstat``); the kernel's listen-queue overflow counters (machine-wide)
around the connect and the reconnect -- an overflowing accept queue makes clients retransmit
their SYN after 1 s, 3 s, 7 s... (the node listens with a backlog of
``sockudo.node.cli.LISTEN_BACKLOG``); ``--profile OUT`` runs the node under cProfile (fanout's
hook).

Prints human lines, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import bisect
import contextlib
import errno
import json
import multiprocessing
import os
import re
import select
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import signed_post
from bench.fanout import (
    EVENT,
    PROFILE_HOOK,
    CpuMeter,
    Publisher,
    Subscribers,
    Wire,
    percentiles_ms,
    print_profile,
    progress,
    rss_kib,
    text,
)
from sockudo.node.cli import LISTEN_BACKLOG
from sockudo.node.replay import MAX_BUFFER_SIZE
from tests.support.node import APP_ID, APP_KEY, NodeProcess

TARGET_CATCH_UP_MS = 1000.0

BENCH_FRAME = f'{{"event":"{EVENT}","channel":"'.encode()
"""How a bench message starts on the wire (spec 02 §2.1 member order); other frames are parsed."""
SERIAL = re.compile(rb'"serial":(\d+)')
STREAM_ID = re.compile(rb'"stream_id":"([^"]*)"')
MESSAGE_ID = re.compile(rb'"message_id":"([^"]*)"')
LAG_S = 0.2
"""A publish this far behind its schedule is skipped (counted), not sent late."""
CONNECT_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 60.0

LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops", "SyncookiesSent")


def v2_upgrade_request(port: int) -> bytes:
    """The upgrade the sockudo-python client sends (its query string, JSON format)."""
    key = base64.b64encode(os.urandom(16)).decode()
    query = "protocol=2&client=python&version=2.2.0&flash=false&format=json"
    query += "&echo_messages=true&append_mode=delta"
    return (
        f"GET /app/{APP_KEY}?{query} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _json_data(msg: dict[str, Any]) -> dict[str, Any]:
    """``data`` of a V2 system frame: a JSON string (spec 02 §3) or an object."""
    data = msg.get("data")
    if isinstance(data, str):
        data = json.loads(data)
    return data if isinstance(data, dict) else {}


# --- one V2 subscriber (client processes) -------------------------------------------------------


class V2Sub(Wire):
    """One V2 subscriber on one channel: the sockudo-python client's recovery behaviour, plus
    the bookkeeping of the bench (every serial received, the reconnect's milestones).

    ``Wire`` parses the WebSocket frames; bench payloads never hold ``fanout.MARK``, so every
    text frame reaches :meth:`control`.
    """

    def __init__(self, owner: Subscribers, index: int, channel: str) -> None:
        super().__init__(owner, [channel])
        self.index = index
        self.channel = channel
        self.sock: socket.socket | None = None
        self.open = False
        self.connecting = False
        self.dead = False
        """The socket failed or the server closed it (not a deliberate drop)."""
        self.now = 0
        self.position: dict[str, Any] | None = None
        """What the client would resume from: ``serial``, ``stream_id``, ``last_message_id``."""
        # The whole run.
        self.base: int | None = None
        """Head at the first attach: every later serial must arrive exactly once."""
        self.seen = bytearray()
        """Receipts of serial ``base + 1 + i`` at ``i``."""
        self.contiguous = 0
        """Every serial in ``(base, contiguous]`` has arrived."""
        self.frames = 0
        self.duplicates = 0
        self.before_attach = 0
        self.out_of_order = 0
        self.last = 0
        """Highest serial on the current connection."""
        # The reconnect.
        self.reconnecting = False
        self.marks: dict[str, Any] = {}
        self.attach: int | None = None
        """The attach head A of the first ``subscription_succeeded`` after reconnecting."""
        self.replay = array.array("q")
        """``serial, receive ns`` pairs of serials <= A received after reconnecting."""

    # I/O (non-blocking socket; the process loop owns the epoll registration).

    def start(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect_ex(("127.0.0.1", self.owner.port))
        self.sock, self.open, self.connecting, self.dead = sock, True, True, False
        self.upgraded, self.failed, self.buf, self.last = False, None, bytearray(), 0
        return sock

    def connected(self) -> None:
        assert self.sock is not None
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(f"connect: {os.strerror(err)}")
            return
        self.connecting = False
        self.write(v2_upgrade_request(self.owner.port))

    def write(self, frame: bytes) -> None:
        if self.open and self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendall(frame)

    def shut(self) -> None:
        if self.open and self.sock is not None:
            self.open = False
            self.sock.close()

    def fail(self, why: str) -> None:
        self.dead = True
        super().fail(why)

    def lost(self) -> None:
        self.dead = True
        super().lost()

    def drop(self) -> None:
        """Close the TCP socket without a close frame, as a lost network would."""
        self.marks = {"drop": time.time_ns()}
        if self.live:
            self.live = False
            self.owner.subscribed -= 1
        self.shut()

    def reconnect(self) -> socket.socket:
        self.reconnecting = True
        self.attach = None
        self.replay = array.array("q")
        self.marks["reconnect"] = time.time_ns()
        return self.start()

    # Protocol.

    def feed(self, data: bytes, now: int) -> None:
        self.now = now
        super().feed(data, now)

    def subscribe(self) -> None:
        self.write(
            text({"event": "sockudo:subscribe", "data": {"auth": "", "channel": self.channel}})
        )

    def control(self, payload: bytes) -> None:
        if payload.startswith(BENCH_FRAME):
            self.message(payload)
            return
        msg = json.loads(payload)
        event = msg.get("event")
        now, marks = self.now, self.marks
        if event == "sockudo:connection_established":
            if self.reconnecting:
                marks["established"] = now
                if self.position is not None:
                    # The client's order: the resume goes out inline, the subscribe after it.
                    marks["resume_from"] = self.position["serial"]
                    resume = {"channel_positions": {self.channel: self.position}}
                    self.write(text({"event": "sockudo:resume", "data": resume}))
            self.subscribe()
        elif event == "sockudo_internal:subscription_succeeded":
            serial = msg.get("serial")
            if isinstance(serial, int):
                self.track(serial, msg.get("stream_id"), msg.get("message_id"))
                if self.base is None:
                    self.base = self.contiguous = serial
                if self.reconnecting and self.attach is None:
                    self.attach = serial
                    marks["subscribed"] = now
            if not self.live:
                self.live = True
                self.owner.subscribed += 1
        elif event == "sockudo:ping":
            self.write(text({"event": "sockudo:pong", "data": {}}))
        elif event == "sockudo:resume_success":
            data = _json_data(msg)
            if self.channel in (data.get("pending") or []):
                marks["pending"] = now
            for item in data.get("recovered") or []:
                if isinstance(item, dict) and item.get("channel") == self.channel:
                    marks["recovered"] = now
                    marks["replayed"] = item.get("replayed")
                    marks["source"] = item.get("source")
                    pos = item.get("position")
                    if isinstance(pos, dict) and isinstance(pos.get("serial"), int):
                        self.track(pos["serial"], pos.get("stream_id"), pos.get("last_message_id"))
        elif event == "sockudo:resume_failed":
            data = _json_data(msg)
            if data.get("channel") == self.channel:
                marks.setdefault("failed", now)
                marks.setdefault("failure", f"{data.get('code')}/{data.get('reason')}")
                self.position = None
                self.subscribe()  # the client resubscribes (idempotent on the server)
        elif event == "sockudo:error":
            self.owner.error(f"sockudo:error {msg.get('data')}")

    def track(self, serial: int, stream_id: Any, message_id: Any) -> None:
        """The client's recovery position: the last ``serial`` seen with this channel."""
        pos: dict[str, Any] = {"serial": serial}
        if isinstance(stream_id, str):
            pos["stream_id"] = stream_id
        if isinstance(message_id, str):
            pos["last_message_id"] = message_id
        self.position = pos

    def message(self, payload: bytes) -> None:
        m = SERIAL.search(payload)
        if m is None or self.base is None:
            self.owner.error(f"message without serial or before attach: {payload[:120]!r}")
            return
        serial = int(m.group(1))
        sid, mid = STREAM_ID.search(payload), MESSAGE_ID.search(payload)
        self.track(
            serial,
            sid.group(1).decode() if sid is not None else None,
            mid.group(1).decode() if mid is not None else None,
        )
        self.frames += 1
        if serial <= self.last:
            self.out_of_order += 1
        self.last = max(self.last, serial)
        at = serial - self.base - 1
        if at < 0:
            self.before_attach += 1
        else:
            seen = self.seen
            if at >= len(seen):
                seen.extend(bytes(at - len(seen) + 256))
            if seen[at]:
                self.duplicates += 1
            else:
                seen[at] = 1
                n = len(seen)
                while self.contiguous - self.base < n and seen[self.contiguous - self.base]:
                    self.contiguous += 1
        if self.reconnecting and self.attach is not None:
            if serial <= self.attach:
                self.replay.append(serial)
                self.replay.append(self.now)
            elif "first_live" not in self.marks:
                self.marks["first_live"] = self.now

    # Reports.

    def settled(self) -> bool:
        """After a reconnect: subscribed and the resume answered (or nothing to resume)."""
        if self.dead:
            return True
        if not self.live:
            return False
        return "resume_from" not in self.marks or bool({"recovered", "failed"} & self.marks.keys())

    def missing(self, head: int) -> int:
        """Serials in ``(base, head]`` never received."""
        if self.base is None:
            return max(0, head)
        want = max(0, head - self.base)
        have = self.seen[:want]
        return want - len(have) + have.count(0)

    def report(self, head: int) -> dict[str, Any]:
        return {
            "index": self.index,
            "channel": self.channel,
            "base": self.base,
            "contiguous": self.contiguous,
            "frames": self.frames,
            "missing": self.missing(head),
            "duplicates": self.duplicates,
            "before_attach": self.before_attach,
            "out_of_order": self.out_of_order,
            "dead": self.dead,
            "marks": dict(self.marks),
            "replay": self.replay.tobytes(),
        }


class ClientProcess:
    """The subscribers of one process and its ``epoll`` loop; commands come over ``conn``."""

    def __init__(self, conn: Connection, port: int, plan: list[tuple[int, str]]) -> None:
        self.conn = conn
        self.owner = Subscribers(port)
        self.subs = [V2Sub(self.owner, i, channel) for i, channel in plan]
        self.poller = select.epoll()
        self.by_fd: dict[int, V2Sub] = {}
        self.lost: Counter[str] = Counter()
        self.poller.register(conn.fileno(), select.EPOLLIN)

    def lose(self, sub: V2Sub, why: str) -> None:
        """A socket the server closed or reset (not a deliberate drop), by reason."""
        why += " after upgrade" if sub.upgraded else " before upgrade"
        self.lost[why] += 1
        self.owner.error(why)

    def watch(self, sub: V2Sub, sock: socket.socket) -> None:
        self.by_fd[sock.fileno()] = sub
        self.poller.register(sock.fileno(), select.EPOLLOUT)

    def forget(self, fd: int) -> None:
        with contextlib.suppress(OSError):  # already gone if the socket was closed
            self.poller.unregister(fd)
        self.by_fd.pop(fd, None)

    def run(self) -> None:
        running = True
        while running:
            for fd, _ in self.poller.poll(1.0):
                if fd == self.conn.fileno():
                    try:
                        cmd, arg = self.conn.recv()
                    except EOFError:
                        cmd, arg = "stop", None
                    running = self.command(cmd, arg)
                    if not running:
                        break
                    continue
                sub = self.by_fd.get(fd)
                if sub is not None:
                    self.ready(fd, sub)
        for sub in self.subs:
            sub.shut()

    def ready(self, fd: int, sub: V2Sub) -> None:
        if sub.connecting:
            sub.connected()
            if sub.open:
                self.poller.modify(fd, select.EPOLLIN)
            else:
                self.lost[sub.failed or "connect"] += 1
                self.forget(fd)
            return
        assert sub.sock is not None
        try:
            data = sub.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lose(sub, f"recv {errno.errorcode.get(exc.errno or 0, exc.errno)}")
            data = b""
        if data:
            sub.feed(data, time.time_ns())
        elif sub.open:
            self.lose(sub, "EOF")
        if not data or not sub.open:
            self.forget(fd)
            sub.shut()
            sub.lost()

    def command(self, cmd: str, arg: Any) -> bool:
        subs = self.subs
        if cmd == "connect":
            for sub in subs:
                self.watch(sub, sub.start())
            self.conn.send({"n": len(subs)})
        elif cmd == "drop":
            at = time.time_ns()
            for sub in subs:
                if sub.open and sub.sock is not None:
                    self.forget(sub.sock.fileno())
                sub.drop()
            self.conn.send({"at": at})
        elif cmd == "reconnect":
            at = time.time_ns()
            for sub in subs:
                self.watch(sub, sub.reconnect())
            self.conn.send({"at": at})
        elif cmd == "peek":
            heads: dict[str, int] = arg or {}
            self.conn.send(
                {
                    "subscribed": self.owner.subscribed,
                    "settled": sum(s.settled() for s in subs),
                    "complete": sum(s.dead or s.contiguous >= heads.get(s.channel, 0) for s in subs)
                    if heads
                    else 0,
                    "dead": sum(s.dead for s in subs),
                    "frames": sum(s.frames for s in subs),
                    "errors": list(self.owner.errors),
                }
            )
        elif cmd == "report":
            heads = arg or {}
            self.conn.send(
                {
                    "subs": [s.report(heads.get(s.channel, 0)) for s in subs],
                    "errors": list(self.owner.errors),
                    "close_codes": dict(self.owner.close_codes),
                    "lost": dict(self.lost),
                }
            )
        else:
            return False
        return True


def client_main(conn: Connection, port: int, plan: list[tuple[int, str]]) -> None:
    ClientProcess(conn, port, plan).run()


@dataclass
class Client:
    proc: multiprocessing.process.BaseProcess
    conn: Connection

    async def ask(self, cmd: str, arg: Any = None) -> dict[str, Any]:
        self.conn.send((cmd, arg))

        def answer() -> dict[str, Any]:
            if not self.conn.poll(REPLY_TIMEOUT_S):
                raise TimeoutError(f"subscriber process did not answer {cmd!r}")
            reply: dict[str, Any] = self.conn.recv()
            return reply

        return await asyncio.to_thread(answer)


# --- publishers ---------------------------------------------------------------------------------


class AckPublisher(Publisher):
    """``fanout.Publisher`` for this bench: one message on ``/events`` asking for the channel
    acknowledgement (its delivery serial), or several on ``/batch_events`` (no serials)."""

    BATCH_PATH = f"/apps/{APP_ID}/batch_events"

    def __init__(self, port: int, pad: str) -> None:
        super().__init__(port, pad)
        self.items: list[str] = []
        self.serial = 0

    async def send(self, channels: list[str]) -> float:
        """Publish one message per entry of ``channels``; the HTTP round trip in seconds."""
        self.items = channels
        return await self.publish(channels[0])  # fanout's reconnect-when-idle around _publish

    async def _publish(self, channel: str) -> float:
        assert self.reader is not None
        assert self.writer is not None
        sent_ns = time.time_ns()
        single = len(self.items) <= 1
        doc: dict[str, Any] = (
            {"name": EVENT, "channel": channel, "data": self.pad, "info": ""}
            if single
            else {"batch": [{"name": EVENT, "channel": c, "data": self.pad} for c in self.items]}
        )
        body = json.dumps(doc, separators=(",", ":")).encode()
        path = self.PATH if single else self.BATCH_PATH
        answer = await signed_post(
            self.reader, self.writer, self.port, path, body, sent_ns // 10**9
        )
        if single:
            self.serial = int(json.loads(answer)["channels"][channel]["delivery_serial"])
        return (time.time_ns() - sent_ns) / 1e9


@dataclass
class Acks:
    """When the node acknowledged which serial of one channel (in acknowledgement order)."""

    at_ns: array.array[int] = field(default_factory=lambda: array.array("q"))
    head: array.array[int] = field(default_factory=lambda: array.array("q"))
    """Running maximum of the acknowledged serials."""

    def add(self, at_ns: int, serial: int) -> None:
        self.at_ns.append(at_ns)
        self.head.append(max(serial, self.head[-1] if self.head else 0))

    def add_one(self, at_ns: int) -> None:
        """A message acknowledged without its serial (``/batch_events``): serials follow commit
        order and every acknowledged message is committed, so the n-th acknowledged message
        proves the channel's head is at least n."""
        self.add(at_ns, len(self.at_ns) + 1)

    def head_at(self, t_ns: int) -> int:
        """The highest serial acknowledged by ``t_ns``."""
        i = bisect.bisect_right(self.at_ns, t_ns)
        return self.head[i - 1] if i else 0


class Pacer:
    """``rate`` messages/s on schedule, round-robin over the channels, until stopped; with
    ``batch`` > 1 each request carries that many messages (``rate / batch`` requests/s)."""

    def __init__(self, port: int, channels: list[str], args: argparse.Namespace) -> None:
        self.port = port
        self.channels = channels
        self.rate = float(args.rate)
        self.batch = args.batch
        self.pad = "x" * args.payload_bytes
        self.publishers = [AckPublisher(port, self.pad) for _ in range(args.publishers)]
        self.acks = {c: Acks() for c in channels}
        self.ack_ns = array.array("q")
        self.rtts = array.array("q")
        self.slot = 0
        self.skipped = 0
        self.failed = 0
        self.errors: list[str] = []
        self.began_ns = 0
        self.ended_ns = 0

    async def connect(self) -> None:
        for p in self.publishers:
            await p.connect()

    async def run(self, stop: asyncio.Event) -> None:
        began = time.monotonic()
        self.began_ns = time.time_ns()

        async def worker(pub: AckPublisher) -> None:
            while not stop.is_set():
                slot = self.slot
                self.slot += 1
                delay = began + slot * self.batch / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if stop.is_set():
                        break
                elif -delay > LAG_S:
                    self.skipped += self.batch
                    continue
                first, c = slot * self.batch, len(self.channels)
                items = [self.channels[(first + i) % c] for i in range(self.batch)]
                try:
                    rtt = await asyncio.wait_for(pub.send(items), 10.0)
                except (OSError, RuntimeError, TimeoutError, ValueError, KeyError) as exc:
                    self.failed += self.batch
                    if len(self.errors) < 10:
                        self.errors.append(repr(exc))
                    await pub.close()
                    continue
                now = time.time_ns()
                if self.batch == 1:
                    self.acks[items[0]].add(now, pub.serial)
                else:
                    for channel in items:
                        self.acks[channel].add_one(now)
                self.ack_ns.extend([now] * self.batch)
                self.rtts.append(int(rtt * 1e9))

        await asyncio.gather(*(worker(p) for p in self.publishers))
        self.ended_ns = time.time_ns()
        for p in self.publishers:
            await p.close()

    def acked_between(self, t0_ns: int, t1_ns: int) -> int:
        return bisect.bisect_right(self.ack_ns, t1_ns) - bisect.bisect_right(self.ack_ns, t0_ns)

    def rate_between(self, t0_ns: int, t1_ns: int) -> float:
        return round(self.acked_between(t0_ns, t1_ns) / max(1e-9, (t1_ns - t0_ns) / 1e9), 1)

    def heads(self) -> dict[str, int]:
        return {c: (a.head[-1] if a.head else 0) for c, a in self.acks.items()}


# --- /proc --------------------------------------------------------------------------------------


class SchedMeter(CpuMeter):
    """``fanout.CpuMeter`` plus the time the node's event-loop thread waited for a CPU while
    runnable (``/proc/<pid>/task/<pid>/schedstat``): high on a machine busy with other work."""

    def snapshot(self) -> dict[str, float]:
        snap = super().snapshot()
        try:
            stat = Path(f"/proc/{self.node_pid}/task/{self.node_pid}/schedstat").read_text()
            snap["node_loop_waiting"] = int(stat.split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            snap["node_loop_waiting"] = 0.0
        return snap


def listen_counters() -> dict[str, int]:
    """Machine-wide TCP listen-queue overflow counters (``/proc/net/netstat``, ``TcpExt``)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {k: int(table[k]) for k in LISTEN_COUNTERS if k in table}
    return {}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - v for k, v in before.items() if k in after}


# --- the benchmark ------------------------------------------------------------------------------


class Bench:
    def __init__(self, node: NodeProcess, args: argparse.Namespace) -> None:
        self.node = node
        self.args = args
        self.channels = [f"recovery-{i}" for i in range(args.channels)]
        self.clients: list[Client] = []

    async def ask_all(self, cmd: str, arg: Any = None) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(c.ask(cmd, arg) for c in self.clients)))

    async def wait_for(
        self, what: str, done: Any, within: float, heads: dict[str, int] | None = None
    ) -> tuple[bool, list[dict[str, Any]]]:
        """Peek every 50 ms until ``done(peeks)``, for at most ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            peeks = await self.ask_all("peek", heads)
            if done(peeks):
                return True, peeks
            if time.monotonic() > deadline:
                progress(f"timed out waiting for {what}: {_sum(peeks)}")
                return False, peeks
            await asyncio.sleep(0.05)

    def stop_clients(self) -> None:
        for c in self.clients:
            with contextlib.suppress(OSError):
                c.conn.send(("stop", None))
        for c in self.clients:
            c.proc.join(5)
            if c.proc.is_alive():
                c.proc.kill()
                c.proc.join(5)

    async def run(self) -> dict[str, Any]:
        try:
            return await self._run()
        finally:
            self.stop_clients()

    async def _run(self) -> dict[str, Any]:
        args, node = self.args, self.node
        assert node.proc is not None
        n = args.subscribers
        ctx = multiprocessing.get_context("spawn")
        plan = [(i, self.channels[i % len(self.channels)]) for i in range(n)]
        for k in range(args.clients):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(child, node.port, plan[k :: args.clients]))
            proc.start()
            self.clients.append(Client(proc, parent))
        progress(f"{args.clients} subscriber processes connecting {n} V2 sockets")
        began = time.monotonic()
        listen = {"connect": listen_counters()}
        await self.ask_all("connect")
        ok, peeks = await self.wait_for(
            "subscriptions", lambda p: _sum(p)["subscribed"] >= n, CONNECT_TIMEOUT_S
        )
        if not ok:
            raise RuntimeError(f"only {_sum(peeks)['subscribed']}/{n} subscribed: {_sum(peeks)}")
        connect_s = time.monotonic() - began
        listen["connected"] = listen_counters()
        progress(f"{n} subscribed in {connect_s:.1f} s; publishing {args.rate:g}/s")

        pacer = Pacer(node.port, self.channels, args)
        await pacer.connect()
        meter = SchedMeter(node.proc.pid, [c.proc.pid or 0 for c in self.clients])
        stop = asyncio.Event()
        snaps = {"warmup": meter.snapshot()}
        t = {"warmup": time.time_ns()}
        publishing = asyncio.create_task(pacer.run(stop))
        try:
            await asyncio.sleep(args.warmup)
            snaps["drop"] = meter.snapshot()
            t["drop"] = min(r["at"] for r in await self.ask_all("drop"))
            progress(f"dropped {n} sockets; reconnecting in {args.outage:g} s")
            await asyncio.sleep(args.outage - (time.time_ns() - t["drop"]) / 1e9)
            snaps["reconnect"] = meter.snapshot()
            listen["reconnect"] = listen_counters()
            t["reconnect"] = min(r["at"] for r in await self.ask_all("reconnect"))
            ok, peeks = await self.wait_for(
                "every resume", lambda p: _sum(p)["settled"] >= n, args.recover_timeout
            )
            snaps["settled"] = meter.snapshot()
            listen["settled"] = listen_counters()
            t["settled"] = time.time_ns()
            progress(
                f"{_sum(peeks)['settled']}/{n} settled in "
                f"{(t['settled'] - t['reconnect']) / 1e9:.2f} s; publishing {args.after:g} s more"
            )
            await asyncio.sleep(args.after)
        finally:
            stop.set()
            await publishing
        snaps["end"] = meter.snapshot()
        t["end"] = pacer.ended_ns
        heads = pacer.heads()
        ok, peeks = await self.wait_for(
            "the final heads", lambda p: _sum(p)["complete"] >= n, args.drain_timeout, heads
        )
        drained_s = (time.time_ns() - t["end"]) / 1e9
        reports = await self.ask_all("report", heads)
        result = self.figures(pacer, reports, snaps, t, heads, connect_s, drained_s)
        result["listen_queue"] = {
            "backlog": LISTEN_BACKLOG,
            "connect": _delta(listen["connect"], listen["connected"]),
            "reconnect": _delta(listen["reconnect"], listen["settled"]),
        }
        return result

    def figures(
        self,
        pacer: Pacer,
        reports: list[dict[str, Any]],
        snaps: dict[str, dict[str, float]],
        t: dict[str, int],
        heads: dict[str, int],
        connect_s: float,
        drained_s: float,
    ) -> dict[str, Any]:
        args = self.args
        subs = [s for r in reports for s in r["subs"]]
        caught: list[int] = []
        after_open: list[int] = []  # caught up, counted from connection_established
        milestones: dict[str, list[int]] = {
            k: [] for k in ("established", "subscribed", "recovered", "first_live")
        }
        failures: Counter[str] = Counter()
        not_caught: Counter[str] = Counter()
        replayed_server = replayed_received = behind_sum = 0
        for s in subs:
            marks = s["marks"]
            start = marks.get("reconnect")
            if start is None:
                not_caught["never reconnected"] += 1
                continue
            for k, v in milestones.items():
                if k in marks:
                    v.append(marks[k] - start)
            if "failure" in marks:
                failures[marks["failure"]] += 1
            replayed_server += marks.get("replayed") or 0
            pairs = array.array("q")
            pairs.frombytes(s["replay"])
            got: dict[int, int] = {}
            for i in range(0, len(pairs), 2):
                got.setdefault(pairs[i], pairs[i + 1])
            replayed_received += len(pairs) // 2
            frm = marks.get("resume_from")
            if "established" not in marks:
                not_caught["not reconnected"] += 1
                continue
            if frm is None:
                not_caught["no resume position"] += 1
                continue
            head = pacer.acks[s["channel"]].head_at(start)
            behind_sum += max(0, head - frm)
            wanted = range(frm + 1, head + 1)
            if "failure" in marks:
                not_caught["resume failed"] += 1
            elif any(serial not in got for serial in wanted):
                not_caught["outage not fully received by the end"] += 1
            elif wanted:
                caught.append(max(got[serial] for serial in wanted) - start)
                after_open.append(caught[-1] - (marks["established"] - start))
            elif "recovered" in marks:
                caught.append(marks["recovered"] - start)
                after_open.append(caught[-1] - (marks["established"] - start))
            else:
                not_caught["no resume answer"] += 1
        errors = [e for r in reports for e in r["errors"]]
        close_codes: Counter[str] = Counter()
        lost: Counter[str] = Counter()
        for r in reports:
            close_codes.update({str(k): v for k, v in r["close_codes"].items()})
            lost.update(r["lost"])
        rtts = list(pacer.rtts)
        cpu = {
            phase: CpuMeter.percent(snaps[a], snaps[b])
            for phase, a, b in (
                ("steady", "warmup", "drop"),
                ("outage", "drop", "reconnect"),
                ("recovery", "reconnect", "settled"),
                ("after", "settled", "end"),
            )
        }
        published = len(pacer.ack_ns)
        return {
            "subscribers": args.subscribers,
            "clients": args.clients,
            "channels": args.channels,
            "payload_bytes": args.payload_bytes,
            "connect_s": round(connect_s, 2),
            "outage_s": round((t["reconnect"] - t["drop"]) / 1e9, 3),
            "publish": {
                "offered_per_s": args.rate,
                "batch": args.batch,
                "connections": args.publishers,
                "published": published,
                "skipped_behind_schedule": pacer.skipped,
                "failed": pacer.failed,
                "errors": pacer.errors,
                "achieved_per_s": pacer.rate_between(pacer.began_ns, pacer.ended_ns),
                "achieved_per_s_by_phase": {
                    "steady": pacer.rate_between(t["warmup"], t["drop"]),
                    "outage": pacer.rate_between(t["drop"], t["reconnect"]),
                    "recovery": pacer.rate_between(t["reconnect"], t["settled"]),
                    "after": pacer.rate_between(t["settled"], t["end"]),
                },
                "rtt": percentiles_ms(rtts),
                "final_head_max": max(heads.values(), default=0),
            },
            "recovery": {
                "settled_s": round((t["settled"] - t["reconnect"]) / 1e9, 3),
                "caught_up": len(caught),
                "not_caught_up": dict(not_caught),
                "caught_up_ms": percentiles_ms(caught),
                "caught_up_after_established_ms": percentiles_ms(after_open),
                **{f"{k}_ms": percentiles_ms(v) for k, v in milestones.items()},
                "missed_per_client_mean": round(behind_sum / max(1, len(subs)), 1),
                "replayed_server": replayed_server,
                "replayed_received": replayed_received,
                "resume_failures": dict(failures),
            },
            "integrity": {
                "gaps": sum(s["missing"] for s in subs),
                "clients_with_gaps": sum(1 for s in subs if s["missing"]),
                "duplicates": sum(s["duplicates"] for s in subs),
                "clients_with_duplicates": sum(1 for s in subs if s["duplicates"]),
                "out_of_order": sum(s["out_of_order"] for s in subs),
                "before_attach": sum(s["before_attach"] for s in subs),
                "frames": sum(s["frames"] for s in subs),
                "dead_sockets": sum(1 for s in subs if s["dead"]),
                "lost_by_reason": dict(lost),
                "close_codes": dict(close_codes),
                "drained_s": round(drained_s, 2),
                "errors": errors[:10],
            },
            "node_rss_kib": rss_kib(self.node.proc.pid) if self.node.proc else None,
            "cpu_percent": cpu,
        }


def _sum(peeks: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: 0 for k in ("subscribed", "settled", "complete", "dead", "frames")}
    for p in peeks:
        for k in out:
            out[k] += p[k]
    out["errors"] = [e for p in peeks for e in p["errors"]][:5]
    return out


def report(result: dict[str, Any]) -> None:
    pub, rec, integ = result["publish"], result["recovery"], result["integrity"]
    n = result["subscribers"]

    def ms(d: dict[str, float]) -> str:
        return f"p50 {d['p50_ms']} ms p99 {d['p99_ms']} ms max {d['max_ms']} ms"

    print(
        f"recovery: {n} V2 JSON subscribers over {result['clients']} client processes, "
        f"{result['channels']} channels, {result['payload_bytes']}-byte data, embedded log; "
        f"connected in {result['connect_s']} s; outage {result['outage_s']} s (TCP closed, "
        "no close frame), then all reconnect at once: resume, then subscribe"
    )
    phases = pub["achieved_per_s_by_phase"]
    how = (
        "POST /events, one message each"
        if pub["batch"] == 1
        else f"POST /batch_events, {pub['batch']} messages each"
    )
    print(
        f"publish: offered {pub['offered_per_s']:g} messages/s on <= {pub['connections']} "
        f"connections ({how}); achieved {pub['achieved_per_s']:,.1f}/s overall "
        f"(steady {phases['steady']:,.0f}, outage {phases['outage']:,.0f}, recovery "
        f"{phases['recovery']:,.0f}, after {phases['after']:,.0f}); {pub['published']:,} "
        f"published, {pub['skipped_behind_schedule']:,} skipped > {LAG_S:g} s behind, "
        f"{pub['failed']} failed; HTTP round trip {ms(pub['rtt'])}"
    )
    head = (
        "the highest serial the node had acknowledged to a publisher on that channel"
        if pub["batch"] == 1
        else "the number of messages the node had acknowledged on that channel (a lower bound "
        "of its head: /batch_events answers carry no serials)"
    )
    print(
        "caught up = has received, on the new connection, every serial of its channel after "
        f"its resume position P up to H_T, {head} when the client's reconnect began (T); "
        "time = last of those received - T"
    )
    good = rec["caught_up"] == n and rec["caught_up_ms"]["max_ms"] <= TARGET_CATCH_UP_MS
    print(
        f"reconnect->caught up: {ms(rec['caught_up_ms'])}; {rec['caught_up']}/{n} caught up "
        f"{rec['not_caught_up'] or ''}(target all within {TARGET_CATCH_UP_MS:.0f} ms: "
        f"{'ok' if good else 'MISSED'}); all resumes answered after {rec['settled_s']} s"
    )
    print(
        "connection_established->caught up (the resume and replay alone, without the wait "
        f"for the handshake): {ms(rec['caught_up_after_established_ms'])}"
    )
    print(
        f"milestones after reconnect: connection_established {ms(rec['established_ms'])}; "
        f"subscription_succeeded {ms(rec['subscribed_ms'])}; resume_success (replay sent) "
        f"{ms(rec['recovered_ms'])}; first live message {ms(rec['first_live_ms'])}"
    )
    print(
        f"replay: {rec['missed_per_client_mean']} serials missed per client (mean, to H_T); "
        f"{rec['replayed_server']:,} replayed by the server, {rec['replayed_received']:,} "
        f"received <= attach head; resume failures {rec['resume_failures'] or 0}"
    )
    clean = integ["gaps"] == 0 and integ["duplicates"] == 0
    print(
        f"integrity over the run: {integ['gaps']} gaps ({integ['clients_with_gaps']} clients), "
        f"{integ['duplicates']} duplicates ({integ['clients_with_duplicates']} clients), "
        f"{integ['out_of_order']} out of order, {integ['frames']:,} messages received "
        f"({'ok' if clean else 'MISSED'}); {integ['dead_sockets']} sockets lost "
        f"{integ['lost_by_reason'] or ''}(not retried), close codes "
        f"{integ['close_codes'] or 'none'}; drained {integ['drained_s']} s after the last publish"
    )
    lq = result["listen_queue"]
    print(
        f"listen queue (node backlog {lq['backlog']}; kernel counters, machine-wide): "
        f"initial connect {lq['connect'] or 'n/a'}, reconnect {lq['reconnect'] or 'n/a'} "
        "(overflows make clients retransmit their SYN after 1 s, 3 s, 7 s, ...)"
    )
    for phase, cpu in result["cpu_percent"].items():
        print(
            f"CPU {phase}: node {cpu['node']}% (loop thread {cpu['node_loop']}%, kernel "
            f"{cpu['node_kernel']}%; loop thread runnable but waiting for a CPU "
            f"{cpu['node_loop_waiting']}%), clients {cpu['clients']}%, publishers "
            f"{cpu['publisher']}%, other processes {cpu['other']}% "
            f"(of {100 * (os.cpu_count() or 1)}%)"
        )
    if integ["errors"]:
        print(f"errors: {integ['errors']}")
    print(json.dumps({"bench": "recovery", **result}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4, help="subscriber processes")
    ap.add_argument("--channels", type=int, default=100, help="one per subscriber, round-robin")
    ap.add_argument("--rate", type=float, default=1000.0, help="messages published per second")
    ap.add_argument(
        "--batch",
        type=int,
        default=1,
        help="messages per request: 1 = POST /events (answer carries the serial), "
        "2-10 = POST /batch_events (the node's default max_event_batch_size is 10)",
    )
    ap.add_argument("--publishers", type=int, default=32, help="HTTP keep-alive connections")
    ap.add_argument("--payload-bytes", type=int, default=100, help="size of the data string")
    ap.add_argument("--warmup", type=float, default=3.0, help="live seconds before the drop")
    ap.add_argument("--outage", type=float, default=2.0, help="seconds without sockets")
    ap.add_argument("--after", type=float, default=3.0, help="publishing seconds after recovery")
    ap.add_argument("--recover-timeout", type=float, default=15.0)
    ap.add_argument("--drain-timeout", type=float, default=10.0)
    ap.add_argument("--profile", type=Path, help="run the node under cProfile, write stats here")
    args = ap.parse_args()
    if args.subscribers < 1 or args.channels < 1 or args.rate <= 0 or args.batch < 1:
        ap.error("--subscribers, --channels, --rate and --batch must be positive")
    args.clients = max(1, min(args.clients, args.subscribers))
    gap = args.rate / args.channels * args.outage
    if gap >= MAX_BUFFER_SIZE:
        progress(
            f"warning: ~{gap:.0f} messages per channel published during the outage, more than "
            f"the recovery window ({MAX_BUFFER_SIZE}): resumes will fail with "
            "position_expired/recovery_window_exceeded"
        )
    with tempfile.TemporaryDirectory() as d:
        env: dict[str, str] = {}
        if args.profile:
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
            node.stop()  # the clean shutdown path (and the profile hook's atexit dump)
        finally:
            node.kill()
    report(result)
    if args.profile is not None:
        print_profile(args.profile)


if __name__ == "__main__":
    main()
