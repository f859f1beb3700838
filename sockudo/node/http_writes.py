"""uvicorn's httptools protocol with each response's head and first body bytes in one write.

uvicorn writes the status line and headers as soon as the application starts its response,
then the body when it arrives: two ``write`` system calls per response, and two TCP segments
on an idle keep-alive connection. On this machine the header write alone was about a tenth of
a node's CPU while serving history pages. :class:`CoalescingHttpProtocol` gives each request's
cycle a transport that holds the head until the first body write (or the end of the
response, or a close) and sends both together. An interim ``100 Continue`` goes out at once:
the client waits for it before sending its body.
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
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` whose request cycles write through a :class:`HeldHead`."""

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
