"""uvicorn's httptools protocol with each response's head and first body bytes in one write.

uvicorn writes the status line and headers as soon as the application starts its response,
then the body when it arrives: two ``write`` system calls per response, and two TCP segments
on an idle keep-alive connection. On this machine the header write alone was about a tenth of
a node's CPU while serving history pages. :class:`CoalescingHttpProtocol` gives each request's
cycle a transport that holds the head until the first body write (or the end of the
response, or a close) and sends both together. An interim ``100 Continue`` goes out at once:
the client waits for it before sending its body.

It also keeps pipelined answers in order when a later request is malformed: uvicorn answers
that one with ``400`` and closes at once, ahead of the responses still owed to the requests
before it (the client would read the ``400`` as the first one's answer, and their
responses would be written to a closed transport, which uvloop refuses with an error).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpProtocol", "HeldHead"]

_CONTINUE = b"HTTP/1.1 100 "


class HeldHead:
    """One response's view of the connection's transport: its head waits for its body."""

    __slots__ = ("_held", "_started", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            return  # the connection is gone: asyncio drops such writes, uvloop raises
        if not self._started:
            if data.startswith(_CONTINUE):
                self._transport.write(data)
                return
            self._started = True
            self._held = data
            return
        held = self._held
        if held is None:
            self._transport.write(data)
            return
        self._held = None
        # One system call without copying the body onto the head (uvloop writes both with
        # one writev).
        self._transport.writelines((held, data))

    def flush(self) -> None:
        """Send a head still held (a response that ended without body bytes)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose request cycles write through a :class:`HeldHead`, and
    whose ``400`` for a malformed pipelined request waits for the answers owed before it."""

    _refusal: str | None = None
    """The ``400`` message held until the requests before the malformed one are answered."""

    def data_received(self, data: bytes) -> None:
        if self._refusal is None:  # after a malformed request nothing more is read
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        cycle = self.cycle  # the newest parsed request; those before it are answered in order
        if cycle is None or cycle.response_complete or cycle.more_body:
            # Nothing is owed, or the malformed bytes are the body of the newest request,
            # which can then never be answered: refuse now, as uvicorn does.
            super().send_400_response(msg)
            return
        self._refusal = msg

    def on_response_complete(self) -> None:
        super().on_response_complete()
        msg, cycle = self._refusal, self.cycle
        if msg is None or self.pipeline or (cycle is not None and not cycle.response_complete):
            return
        self._refusal = None
        if not self.transport.is_closing():
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle is before:
            return  # a WebSocket upgrade: no request cycle
        held = HeldHead(cycle.transport)
        cycle.transport = held  # type: ignore[assignment]
        done = cycle.on_response

        def on_response() -> None:
            held.flush()
            done()

        cycle.on_response = on_response
