"""Runs an ASGI app on a listener: uvicorn (default) or Hypercorn, chosen by ``http_server``.

uvicorn parses HTTP/1.1 with httptools (C) and costs about half of Hypercorn's CPU per request
(h11 in pure Python, a task and a queue per request, a task per read): on this project's
2-core reference machine one node answers ~1,150 signed publishes/s under uvicorn against
~640/s under Hypercorn, which decides the fanout latency target at 500 publishes/s. Hypercorn
stays selectable (HTTP/2, trio-less deployments that standardised on it); both serve the same
Starlette app, and ``sockudo/ws/direct.py`` finds the WebSocket transport under either.

Both are configured alike: WebSocket permessage-deflate off (fanout writes pre-encoded,
uncompressed frames straight to transports), the server's own keep-alive pings off (the edge
runs the heartbeats of spec 01 §2.5 / spec 02 §10), no access log, no proxy-header rewriting
(the per-IP limiter applies its own ``trust_hops``), and the caller's shutdown trigger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from starlette.types import ASGIApp

from sockudo.config import HttpServer


@dataclass(frozen=True, slots=True)
class Listener:
    """Where and how one listener serves."""

    host: str
    port: int
    backlog: int = 100
    websocket_max_message_size: int = 16 * 1024 * 1024
    graceful_timeout_s: float = 10.0


class ListenError(Exception):
    """A listener could not take its address (in use, not local, not resolvable)."""

    def __init__(self, listener: Listener, reason: str) -> None:
        super().__init__(f"cannot listen on {listener.host}:{listener.port}: {reason}")
        self.listener = listener


async def serve(
    kind: HttpServer,
    app: ASGIApp,
    listener: Listener,
    shutdown_trigger: Callable[[], Awaitable[object]],
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns, then drain within the grace period.

    ``on_listening`` runs once the address is bound (Hypercorn: as it starts, since it binds
    inside its own serve). Raises :class:`ListenError` when uvicorn cannot bind.
    """
    if kind == "hypercorn":
        if on_listening is not None:
            on_listening()
        await _serve_hypercorn(app, listener, shutdown_trigger)
    else:
        await _serve_uvicorn(app, listener, shutdown_trigger, on_listening)


async def _serve_hypercorn(
    app: ASGIApp, listener: Listener, shutdown_trigger: Callable[[], Awaitable[object]]
) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    cfg = Config()
    cfg.bind = [f"{listener.host}:{listener.port}"]
    cfg.graceful_timeout = listener.graceful_timeout_s
    cfg.accesslog = None
    cfg.backlog = listener.backlog
    cfg.websocket_max_message_size = listener.websocket_max_message_size
    await hypercorn_serve(app, cfg, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]


async def _serve_uvicorn(
    app: ASGIApp,
    listener: Listener,
    shutdown_trigger: Callable[[], Awaitable[object]],
    on_listening: Callable[[], None] | None,
) -> None:
    import uvicorn

    from sockudo.node.fast_upgrade import FastUpgradeWSProtocol
    from sockudo.node.ws_protocol import UpgradingHttpProtocol

    class Server(uvicorn.Server):
        """A uvicorn server that leaves signals to the node (it installs its own handlers)
        and says when it is bound."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and on_listening is not None:
                on_listening()

    config = uvicorn.Config(
        app,
        host=listener.host,
        port=listener.port,
        loop="none",
        # httptools, each response's head and body in one write (http_writes.py); valid
        # WebSocket upgrades go to the node's own protocol (ws_protocol.py), the rest to
        # wsproto, with the opening handshake read and answered without h11 (fast_upgrade.py).
        http=UpgradingHttpProtocol,
        ws=FastUpgradeWSProtocol,
        ws_max_size=listener.websocket_max_message_size,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        backlog=listener.backlog,
        timeout_graceful_shutdown=int(listener.graceful_timeout_s),
    )
    # uvicorn logs every WebSocket accept and close at INFO: 7 % of a handshake's CPU, and
    # noise in a node's log; its warnings and errors still come through.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    server = Server(config)

    async def stop_when_triggered() -> None:
        await shutdown_trigger()
        server.should_exit = True

    trigger = asyncio.create_task(stop_when_triggered())
    try:
        await server.serve()
    except SystemExit as exc:
        # uvicorn logs a failed bind and exits the process from inside the event loop; the
        # OSError is the exit's context. The node stops cleanly on a typed error instead.
        if server.started:
            raise
        raise ListenError(listener, str(exc.__context__ or "startup failed")) from None
    finally:
        trigger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trigger
