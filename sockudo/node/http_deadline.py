"""A deadline on reading each HTTP request, so idle or trickling connections cannot pile up.

uvicorn closes a keep-alive connection left idle after a response, but not one that never
sends a request, stops half-way through its head, or trickles its body: each would hold a
socket (and a file descriptor) for as long as its client likes, a few bytes at a time
(slowloris). :class:`DeadlineHttpProtocol` gives a connection :data:`REQUEST_TIMEOUT_S` to
start a request, a request's head as long from its first byte, and its body as long between
two reads. A request cut short that way is answered ``408`` and the connection closed; a
connection that sent nothing is closed. A WebSocket upgrade ends the deadline (heartbeats take
over), and so does a complete request (uvicorn's keep-alive timeout then governs the wait for
the next one).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sockudo.node.http_writes import CoalescingHttpProtocol

__all__ = ["REQUEST_TIMEOUT_S", "DeadlineHttpProtocol"]

REQUEST_TIMEOUT_S = 30.0
"""For a request's head in all, and for each pause in its body: far longer than a client on a
working network needs, short enough that idle connections do not pile up."""

_TIMEOUT_BODY = b"Request Timeout"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class DeadlineHttpProtocol(CoalescingHttpProtocol):
    """:class:`CoalescingHttpProtocol` with a deadline on reading each request."""

    _deadline: asyncio.TimerHandle | None = None
    _in_request = False
    """Bytes of a request have arrived and its end has not."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()  # a connection must start its request in time too

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_request = True
        self._arm()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm()  # the body only has to keep coming

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_request = False
        self.stop_deadline()

    def handle_websocket_upgrade(self) -> None:
        self.stop_deadline()
        super().handle_websocket_upgrade()

    def stop_deadline(self) -> None:
        """No deadline from now on (the request is read, or the connection is not HTTP's)."""
        timer, self._deadline = self._deadline, None
        if timer is not None:
            timer.cancel()

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(REQUEST_TIMEOUT_S, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        cycle = self.cycle
        if self._in_request and (cycle is None or not cycle.response_started):
            transport.write(_TIMEOUT_RESPONSE)
        transport.close()
