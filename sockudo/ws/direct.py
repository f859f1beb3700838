"""The ``sockudo.transport`` and ``sockudo.inbound`` ASGI extensions under uvicorn or Hypercorn.

Sending every fanout frame through ASGI costs a task wake-up, a ``send`` message, wsproto and
an awaited drain per socket and frame (~40-60 µs each). Once a socket is accepted, data frames
are plain bytes that never change (server frames are unmasked, see framing.py), so the edge
may write them straight to the connection's transport, shared between subscribers, and keep
ASGI for the handshake, the inbound side and the close.

Neither server has a public way to reach the transport. :func:`with_transport_extension` wraps
the application handed to the server and follows the bound ``send`` callable down to the
transport (asyncio's or uvloop's), checking every hop's type: under uvicorn's wsproto
implementation ``send`` is bound to the connection's ``WSProtocol``; under Hypercorn to an
HTTP/1.1 ``WSStream``, whose protocol's server holds the writer. Any other server, protocol
(HTTP/2) or version yields no extension and the edge falls back to ASGI sends.
``tests/integration/test_ws_direct_servers.py`` runs both servers as the node does.

The same walk gives the ``sockudo.inbound`` extension, the object whose ``connection`` is the
socket's wsproto connection: after the accept, :func:`watch_inbound` observes the wsproto events
the server reads, including the Ping and Pong control frames ASGI never reports, so the node
can run the native WebSocket heartbeat of spec 02 §10.1 (sockudo/ws/heartbeat.py) and count
client Pings as spec 01 §3.2 asks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeGuard, cast

from starlette.types import ASGIApp, Receive, Scope, Send
from wsproto.connection import Connection
from wsproto.events import Ping

from sockudo.ws.framing import Transport

log = logging.getLogger(__name__)

EXTENSION = "sockudo.transport"
INBOUND = "sockudo.inbound"
NEVER = float("-inf")
"""``InboundWatch`` times before the first frame: earlier than any monotonic clock reading."""


_TRANSPORT_TYPES: set[type] = set()
"""Transport classes already checked against the ``Transport`` protocol (a slow isinstance)."""


def _is_transport(obj: object) -> TypeGuard[Transport]:
    cls = type(obj)
    if cls in _TRANSPORT_TYPES:
        return True
    if isinstance(obj, Transport):
        _TRANSPORT_TYPES.add(cls)
        return True
    return False


def _hypercorn_stream(send: Any) -> tuple[Any, Transport] | None:
    """Hypercorn's HTTP/1.1 ``WSStream`` behind ``send`` and its connection's transport."""
    try:
        from hypercorn.asyncio.tcp_server import TCPServer
        from hypercorn.protocol.h11 import H11Protocol
        from hypercorn.protocol.ws_stream import WSStream
    except ImportError:  # pragma: no cover - hypercorn is a dependency
        return None
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None  # HTTP/2 streams share one connection: never write frames raw there
    server = getattr(protocol.send, "__self__", None)
    if not isinstance(server, TCPServer):
        return None
    transport = server.writer.transport
    return (stream, transport) if _is_transport(transport) else None


def _uvicorn_stream(send: Any) -> tuple[Any, Transport] | None:
    """uvicorn's wsproto ``WSConnection`` behind ``send`` and the connection's transport.

    The ``WSConnection`` plays the part of Hypercorn's stream for :func:`watch_inbound`: its
    ``connection`` attribute is the socket's ``wsproto.Connection`` once accepted.
    """
    try:
        from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
        from wsproto import WSConnection
    except ImportError:  # pragma: no cover - uvicorn is a dependency
        return None
    protocol = getattr(send, "__self__", None)
    if isinstance(getattr(protocol, "frame_clock", None), FrameClock):
        # The node's own protocol (sockudo/node/ws_protocol.py) keeps the clock itself.
        transport = getattr(protocol, "transport", None)
        return (protocol, transport) if _is_transport(transport) else None
    if not isinstance(protocol, WSProtocol):
        return None
    conn = getattr(protocol, "conn", None)
    transport = getattr(protocol, "transport", None)
    if not isinstance(conn, WSConnection) or not _is_transport(transport):
        return None
    return conn, transport


def _server_stream(send: Any) -> tuple[Any, Transport] | None:
    """The inbound stream and transport behind ``send`` under either server the node runs."""
    return _uvicorn_stream(send) or _hypercorn_stream(send)


def with_transport_extension(app: ASGIApp) -> ASGIApp:
    """``app`` with the ``sockudo.transport`` and ``sockudo.inbound`` extensions on WebSockets."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            found = _server_stream(send)
            if found is not None:
                stream, transport = found
                scope = dict(scope)
                extensions = scope.get("extensions") or {}
                scope["extensions"] = {**extensions, EXTENSION: transport, INBOUND: stream}
        await app(scope, receive, send)

    return wrapped


def transport_of(scope: Scope) -> Transport | None:
    """The transport the extension put in ``scope``, if any."""
    extensions = scope.get("extensions") or {}
    transport = extensions.get(EXTENSION)
    # Only with_transport_extension sets it, after checking the type: no second Protocol check.
    return cast(Transport, transport) if transport is not None else None


class FrameClock:
    """When the server last read a frame of one socket, and a WebSocket Ping in particular,
    on ``time.monotonic()``, the clock of the session's deadlines."""

    # One per connection: slots keep it at a few dozen bytes.
    __slots__ = ("last_frame", "last_ping")

    def __init__(self) -> None:
        self.last_frame = NEVER
        """Any frame, control frames (Ping, Pong, Close) included."""
        self.last_ping = NEVER


class InboundWatch(FrameClock):
    """A :class:`FrameClock` kept by watching a wsproto connection's events.

    Installed in place of the socket's ``wsproto.Connection.events``, which the server
    iterates after every read (Hypercorn's ``WSStream``, uvicorn's ``WSProtocol`` through
    ``WSConnection.events``): each event passes through unchanged (the server still answers
    Pings and delivers messages), stamped with ``time.monotonic()``, the clock of the
    session's deadlines.
    """

    __slots__ = ("_events",)

    def __init__(self, events: Callable[[], Iterator[object]]) -> None:
        super().__init__()
        self._events = events

    def __call__(self) -> Iterator[object]:
        for event in self._events():
            now = time.monotonic()
            self.last_frame = now
            if isinstance(event, Ping):
                self.last_ping = now
            yield event


class DeadlineReceiver(Protocol):
    """A server's receive with a deadline of its own (the node's ``NodeWSProtocol``)."""

    async def receive_until(self, deadline: float) -> dict[str, Any] | None:
        """The next ASGI message, or ``None`` at ``deadline`` (``time.monotonic()``) or after
        :meth:`wake`."""
        ...

    def wake(self) -> None: ...


def deadline_receiver(scope: Scope) -> DeadlineReceiver | None:
    """The socket's server-side receiver with deadlines, when the server has one.

    ``asyncio.timeout`` around each ``receive`` sets and cancels a timer per message; a
    receiver of this kind keeps one timer per socket instead.
    """
    stream = (scope.get("extensions") or {}).get(INBOUND)
    if stream is None or not callable(getattr(stream, "receive_until", None)):
        return None
    return cast(DeadlineReceiver, stream)


def watch_inbound(scope: Scope) -> FrameClock | None:
    """Start watching the inbound frames of an accepted socket; ``None`` without the extension.

    Call it after ``websocket.accept()``: the server creates the socket's wsproto connection
    then. ``None`` also when that connection is not the wsproto object this code knows, so a
    server or wsproto upgrade that moved it leaves the node on its ASGI-only heartbeat.
    """
    stream = (scope.get("extensions") or {}).get(INBOUND)
    if stream is None:
        return None
    clock = getattr(stream, "frame_clock", None)
    if isinstance(clock, FrameClock):
        return clock
    connection = getattr(stream, "connection", None)
    if not isinstance(connection, Connection):
        return None
    events = connection.events
    if isinstance(events, InboundWatch):
        return events
    if getattr(events, "__func__", None) is not Connection.events:
        return None  # someone else wraps it already: do not guess what it does
    watch = InboundWatch(events)
    try:
        # An instance attribute shadows the method for the `self.connection.events()` calls.
        setattr(connection, "events", watch)  # noqa: B010 - mypy refuses assigning a method
    except AttributeError:  # pragma: no cover - a future wsproto with __slots__
        return None
    return watch
