"""The node's WebSocket protocol under uvicorn: valid upgrades served without wsproto.

uvicorn's wsproto protocol costs a reconnect storm most of its per-socket CPU outside the
node's own code (``bench/ws_handshake.py``): the upgrade request re-serialised and parsed
again, wsproto's handshake, event objects and a generator per frame, an ASGI queue, and a
pause/resume of the socket's reads after every message. :class:`NodeWSProtocol` takes over
from uvicorn's HTTP protocol with the request already parsed (:func:`upgrade_from`): it writes
the 101 itself (the bytes ``fast_upgrade.accept_head`` writes), reads client frames with
``sockudo.ws.reader.FrameReader`` and writes server frames with ``sockudo.ws.framing``.

It keeps uvicorn's ASGI behaviour, message for message: the same scope, the same
``websocket.disconnect`` codes, the close handshake with its 10 s timer, 1009 for an oversize
message, a closed socket after a protocol fault, 1012 on shutdown, 500 when the application
fails before accepting. A rejection (``websocket.close`` or ``websocket.http.response.*``
before the accept) is rare and is written by wsproto's own handshake, from the request as
uvicorn would have handed it over, so its bytes do not change either.

Only well-formed upgrades that wsproto would accept, on a server without uvicorn's keep-alive
pings and compression (the node's settings), take this path; anything else goes to the
``ws`` protocol class uvicorn is configured with (``fast_upgrade.FastUpgradeWSProtocol``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import Any, cast
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected, is_ssl
from uvicorn.server import ServerState
from wsproto.events import AcceptConnection, RejectConnection, RejectData

from sockudo.node.fast_upgrade import FastHandshake, Upgrade, accept_head, judge_upgrade
from sockudo.node.http_deadline import DeadlineHttpProtocol
from sockudo.ws import reader as frames
from sockudo.ws.direct import FrameClock
from sockudo.ws.framing import PONG, close_frame, control_frame, encode_frame

__all__ = ["NodeWSProtocol", "UpgradingHttpProtocol", "upgrade_from"]

log = logging.getLogger("uvicorn.error")

CLOSE_TIMEOUT_S = 10.0
"""How long a sent close waits for the client's (uvicorn's ``close_timeout``); then the
connection is aborted, unsent frames and all."""
PAUSE_AT = 16
"""Received messages the application has not taken yet before reads pause."""


def upgrade_from(http: Any) -> Upgrade | None:
    """The upgrade uvicorn's HTTP protocol ``http`` has parsed, when this module serves it."""
    config = http.config
    if config.ws_ping_interval or config.ws_per_message_deflate:
        return None  # uvicorn's own features: its own protocol class
    scope = http.scope
    if scope["method"] != "GET" or scope["http_version"] != "1.1":
        return None
    return judge_upgrade(http.url, scope["headers"])


class NodeWSProtocol(asyncio.Protocol):
    """One accepted-or-pending WebSocket after uvicorn's HTTP protocol handed it over."""

    def __init__(self, http: Any, upgrade: Upgrade) -> None:
        config: Config = http.config
        server_state: ServerState = http.server_state
        self.config = config
        self.app = config.loaded_app
        self.loop = asyncio.get_running_loop()
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.server_state = server_state
        self.upgrade = upgrade
        self._request_head = (http.scope["method"], http.url, http.scope["headers"])
        """What uvicorn would have re-serialised: a rejection replays it into wsproto."""
        self.transport: asyncio.Transport = http.transport
        self.frame_clock = FrameClock()
        """When a frame last arrived, and a Ping: the native heartbeat reads it (direct.py)."""
        self.reader = frames.FrameReader(config.ws_max_size)
        self.queue: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = math.inf
        """The deadline of the :meth:`receive_until` in progress."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._early = b""
        """Bytes a client sent before our 101 went out, read once it has."""
        self.handshake_complete = False
        self.close_sent = False
        self.disconnected = False
        self.response_started = False
        self.read_paused = False
        self.close_timer: asyncio.TimerHandle | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self._rejection: FastHandshake | None = None
        target, _, query = upgrade.target.partition("?")
        root_path = config.root_path
        headers = [(b"host", upgrade.host.encode()), *upgrade.headers]
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(http.transport) else "ws",
            "server": http.server,
            "client": http.client,
            "root_path": root_path,
            "path": root_path + unquote(target),
            "raw_path": root_path.encode("ascii") + target.encode("ascii"),
            "query_string": query.encode("ascii"),
            "headers": headers,
            "subprotocols": upgrade.subprotocols,
            "state": http.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }

    # --- asyncio protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connections.add(self)  # type: ignore[arg-type]
        self.queue.append({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def connection_lost(self, exc: Exception | None) -> None:
        self._put(
            {"type": "websocket.disconnect", "code": 1005 if self.handshake_complete else 1006}
        )
        self.connections.discard(self)
        self.handshake_complete = True
        self.disconnected = True
        self.writable.set()  # asyncio never resumes writing on a lost transport
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_close_timer()
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if not self.handshake_complete:
            self._early += data
            return
        if self.response_started:
            return  # refused: the client has no WebSocket to send on
        events = self.reader.feed(data)
        if not events:
            return
        now = time.monotonic()
        clock = self.frame_clock
        clock.last_frame = now
        for event in events:
            kind = event[0]
            if self.close_sent:
                # Waiting for the client's close: its close, a fault or an oversize message
                # each end the reader, so each ends the socket now.
                if kind == frames.CLOSE or kind == frames.FAIL or kind == frames.TOO_BIG:
                    self._closed_by_peer(event)
                continue
            if kind == frames.TEXT:
                self._put({"type": "websocket.receive", "text": event[1]})
            elif kind == frames.BINARY:
                self._put({"type": "websocket.receive", "bytes": event[1]})
            elif kind == frames.PING:
                clock.last_ping = now
                self.transport.write(control_frame(PONG, cast(bytes, event[1])))
            elif kind == frames.PONG:
                pass
            elif kind == frames.TOO_BIG:
                self._too_big()
            else:  # CLOSE, FAIL
                self._closed_by_peer(event)
        if len(self.queue) >= PAUSE_AT and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def shutdown(self) -> None:
        """uvicorn's server shutdown: 1012 to an open socket, 500 to one not yet answered."""
        if self.close_sent:
            self._stop_close_timer()
            self.transport.close()
            return
        if self.handshake_complete:
            self._put({"type": "websocket.disconnect", "code": 1012})
            self.transport.write(close_frame(1012))
        else:
            self.send_500_response()
        self.transport.close()

    # --- inbound ----------------------------------------------------------------------------------

    def _put(self, message: dict[str, Any]) -> None:
        self.queue.append(message)
        self.wake()

    def _closed_by_peer(self, event: frames.Event) -> None:
        if self.close_sent:
            # The client answered our close (or broke the protocol or the size limit
            # meanwhile): the end.
            if self._stop_close_timer():
                self.transport.close()
            return
        code, reason = cast(tuple[int, int, str], event)[1:]
        if event[0] == frames.CLOSE:
            self.transport.write(close_frame(code, reason))  # the closing handshake's answer
        # A protocol fault closes the socket without a close frame, as uvicorn does.
        self._put({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.close()

    def _close_expired(self) -> None:
        """No answer to our close in time: drop the connection. ``close`` would first flush
        what the client is not reading, which may never end."""
        self.close_timer = None
        self.transport.abort()

    def _stop_close_timer(self) -> bool:
        """Cancel the wait for the client's close; whether one was running."""
        timer, self.close_timer = self.close_timer, None
        if timer is None:
            return False
        timer.cancel()
        return True

    def _too_big(self) -> None:
        self.close_sent = True
        reason = f"Message exceeds the maximum size ({self.config.ws_max_size} bytes)"
        self._put({"type": "websocket.disconnect", "code": 1009, "reason": reason})
        if not self.transport.is_closing():
            self.transport.write(close_frame(1009, reason))
            self.transport.close()

    async def receive(self) -> dict[str, Any]:
        queue = self.queue
        while not queue:
            await self._wait()
        return self._take()

    async def receive_until(self, deadline: float) -> dict[str, Any] | None:
        """The next message, or ``None`` once ``time.monotonic()`` reaches ``deadline`` or
        :meth:`wake` is called (``sockudo.ws.direct.DeadlineReceiver``).

        The endpoint waits this way for every message with the session's next deadline, which
        moves with each one. Instead of a timer set and cancelled per message, the socket keeps
        one: it only moves earlier at once; when it fires early it is set again for the
        deadline then current.
        """
        if not self.queue:
            if deadline <= time.monotonic():
                # Still a suspension point, as a wait that times out at once is: a caller
                # looping on past deadlines must let the writer it is waiting for run.
                await asyncio.sleep(0)
                return self._take() if self.queue else None
            self._deadline = deadline
            if deadline != math.inf and (self._timer is None or deadline < self._timer_at):
                if self._timer is not None:
                    self._timer.cancel()
                self._set_timer(deadline)
            await self._wait()
            if not self.queue:
                return None
        return self._take()

    def wake(self) -> None:
        """End a :meth:`receive_until` wait now, with ``None``."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self.loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def _take(self) -> dict[str, Any]:
        queue = self.queue
        message = queue.popleft()
        if self.read_paused and not queue:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    def _set_timer(self, at: float) -> None:
        self._timer_at = at
        self._timer = self.loop.call_later(max(0.0, at - time.monotonic()), self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # nobody waits: the next receive_until sets it again
        if time.monotonic() < self._deadline:
            if self._deadline != math.inf:
                self._set_timer(self._deadline)  # the deadline moved on since it was set
            return
        self.wake()

    # --- outbound ---------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind != "websocket.close" and not self.writable.is_set():
            # A close does not wait: a client that stopped reading (the fanout closes such
            # sockets with 4100) would hold it, and the socket, forever.
            await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if not self.handshake_complete:
            self._before_accept(message)
        elif not self.close_sent and not self.response_started:
            if kind == "websocket.send":
                data = message.get("bytes")
                if data is None:
                    data = message["text"]
                if not self.transport.is_closing():
                    self.transport.write(encode_frame(data))
            elif kind == "websocket.close":
                self.close_sent = True
                code = message.get("code", 1000)
                reason = message.get("reason", "") or ""
                self._put({"type": "websocket.disconnect", "code": code, "reason": reason})
                if not self.transport.is_closing():
                    self.transport.write(close_frame(code, reason))
                    if self.read_paused:
                        self.read_paused = False
                        self.transport.resume_reading()
                    self.close_timer = self.loop.call_later(CLOSE_TIMEOUT_S, self._close_expired)
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.send' or 'websocket.close', "
                    f"but got '{kind}'."
                )
        elif self.response_started:
            if kind != "websocket.http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'websocket.http.response.body' but got '{kind}'."
                )
            finished = not message.get("more_body", False)
            self.transport.write(
                self._rejecting().send(RejectData(data=message["body"], body_finished=finished))
            )
            if finished:
                self._put({"type": "websocket.disconnect", "code": 1006})
                self.close_sent = True
                self.transport.close()
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}', after sending 'websocket.close'."
            )

    def _before_accept(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            subprotocol = message.get("subprotocol")
            if subprotocol is not None and subprotocol not in self.upgrade.subprotocols:
                # wsproto's LocalProtocolError, which uvicorn lets through to the application.
                self._rejecting().send(AcceptConnection(subprotocol=subprotocol))
            if self.transport.is_closing():
                return
            self.handshake_complete = True
            headers = self.server_state.default_headers + list(message.get("headers", []))
            self.transport.write(accept_head(self.upgrade.key, subprotocol, b"", headers))
            early, self._early = self._early, b""
            if early:
                self.data_received(early)
        elif kind == "websocket.close":
            self._put({"type": "websocket.disconnect", "code": 1006})
            self.handshake_complete = True
            self.close_sent = True
            self.transport.write(
                self._rejecting().send(RejectConnection(status_code=403, headers=[]))
            )
            self.transport.close()
        elif kind == "websocket.http.response.start":
            status = message["status"]
            if not 100 <= status < 600:
                raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
            self.handshake_complete = True
            self.transport.write(
                self._rejecting().send(
                    RejectConnection(
                        status_code=status, headers=list(message["headers"]), has_body=True
                    )
                )
            )
            self.response_started = True
        else:
            raise RuntimeError(
                "Expected ASGI message 'websocket.accept', 'websocket.close' "
                f"or 'websocket.http.response.start' but got '{kind}'."
            )

    def _rejecting(self) -> FastHandshake:
        """wsproto's handshake, fed the request uvicorn would have handed it: it writes refusals."""
        handshake = self._rejection
        if handshake is None:
            method, url, headers = self._request_head
            head = [method.encode(), b" ", url, b" HTTP/1.1\r\n"]
            for name, value in headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"\r\n")
            handshake = FastHandshake()
            handshake.receive_data(b"".join(head))
            for _ in handshake.events():
                pass
            self._rejection = handshake
        return handshake

    def send_500_response(self) -> None:
        if self.response_started or self.handshake_complete:
            return  # too late for an HTTP answer
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"connection", b"close"),
            (b"content-length", b"21"),
        ]
        handshake = self._rejecting()
        output = handshake.send(RejectConnection(status_code=500, headers=headers, has_body=True))
        output += handshake.send(RejectData(data=b"Internal Server Error"))
        self.transport.write(output)

    async def run_asgi(self) -> None:
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            log.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                log.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                log.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None:
            self.transport.close()


class UpgradingHttpProtocol(DeadlineHttpProtocol):
    """The node's HTTP protocol: hands the upgrades it can to :class:`NodeWSProtocol`."""

    def handle_websocket_upgrade(self) -> None:
        self.stop_deadline()
        upgrade = upgrade_from(self)
        if upgrade is None:
            super().handle_websocket_upgrade()  # uvicorn's, with the re-serialised request
            return
        self.connections.discard(self)
        protocol = NodeWSProtocol(self, upgrade)
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
