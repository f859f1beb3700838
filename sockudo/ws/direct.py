"""The ``sockudo.transport`` ASGI extension: a WebSocket's TCP transport under Hypercorn.

Sending every fanout frame through ASGI costs a task wake-up, a ``send`` message, wsproto and
an awaited drain per socket and frame (~40-60 µs each). Once a socket is accepted, data frames
are plain bytes that never change (server frames are unmasked, see framing.py), so the edge
may write them straight to the connection's transport, shared between subscribers, and keep
ASGI for the handshake, the inbound side and the close.

Hypercorn has no public way to reach the transport. :func:`with_transport_extension` wraps the
application handed to Hypercorn and follows the bound ``send`` callable of an HTTP/1.1
WebSocket stream down to its transport (asyncio's or uvloop's), checking every hop's type; any other
server, protocol (HTTP/2) or Hypercorn version yields no extension and the edge falls back to
ASGI sends. ``tests/integration/test_ws_v1.py`` asserts the fast path is active on the node.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send

from sockudo.ws.framing import Transport

log = logging.getLogger(__name__)

EXTENSION = "sockudo.transport"


def hypercorn_transport(send: Any) -> Transport | None:
    """The transport under Hypercorn's HTTP/1.1 WebSocket ``send``, or ``None``."""
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
    return transport if isinstance(transport, Transport) else None


def with_transport_extension(app: ASGIApp) -> ASGIApp:
    """``app`` with ``scope["extensions"]["sockudo.transport"]`` set on WebSocket scopes."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            transport = hypercorn_transport(send)
            if transport is not None:
                scope = dict(scope)
                scope["extensions"] = {**(scope.get("extensions") or {}), EXTENSION: transport}
        await app(scope, receive, send)

    return wrapped


def transport_of(scope: Scope) -> Transport | None:
    """The transport the extension put in ``scope``, if any."""
    extensions = scope.get("extensions") or {}
    transport = extensions.get(EXTENSION)
    # Only with_transport_extension sets it, after checking the type: no second Protocol check.
    return cast(Transport, transport) if transport is not None else None
