"""WebSocket endpoint ``/app/{app_key}``: pre-upgrade checks, admission, read loop, close codes.

The read loop and fanout only offer frames to the socket's :class:`~sockudo.node.hub.Outbox`,
never await a send, so frames leave in one order and a slow client cannot block the fold loop
(spec 01 §2, §3.1-3.5). Under Hypercorn the outbox writes data frames straight to the socket's
transport (sockudo/ws/direct.py); a writer task sends the closing error and close through ASGI,
and drains the queue where no transport is available.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Message
from starlette.websockets import WebSocket

from sockudo import metrics, origins
from sockudo.capabilities import InvalidToken
from sockudo.channels import resolve_channel_policy
from sockudo.config import AppConfig, Settings
from sockudo.http import ip_limit
from sockudo.http.ip_limit import IpRateLimiter
from sockudo.node.connections import ConnectionService
from sockudo.node.hub import Hub, Outbox
from sockudo.node.replay import HotReplay
from sockudo.node.services import app_history_enabled
from sockudo.node.watchlist import Watchlists
from sockudo.ws import direct, effects, token_auth
from sockudo.ws.egress import V1, Egress, Frame
from sockudo.ws.egress import v2 as v2_egress
from sockudo.ws.framing import PING_FRAME
from sockudo.ws.heartbeat import Beat, NativeHeartbeat, ping_interval
from sockudo.ws.session import (
    PONG_TIMEOUT_CODE,
    PONG_TIMEOUT_REASON,
    PresenceLeave,
    Reply,
    Session,
)
from sockudo.ws.wire import normalize_format

log = logging.getLogger(__name__)

MESSAGE_TOO_BIG = 1009
_ROLLUP_WINDOWS = frozenset({"0", "20", "40", "100", "500"})
# `connection_errors_total{error_type}` of each admission failure (spec 01 §7.4).
_ERROR_TYPES = {
    4001: "app_not_found",
    4003: "app_disabled",
    4009: "origin_not_allowed",
    4004: "over_quota",
    4100: "over_capacity",
}


class WsContext(Protocol):
    """What the endpoint reads from ``app.state.ctx`` (the node's HttpContext satisfies it)."""

    settings: Settings
    hub: Hub
    draining: bool
    clock: Callable[[], float]
    connections: ConnectionService | None
    watchlists: Watchlists | None
    hot: HotReplay
    ws_limiter: IpRateLimiter | None


# --- pure helpers -------------------------------------------------------------------------------


def check_query(params: dict[str, str]) -> tuple[int | None, str | None]:
    """``(protocol, error)``: the protocol number, or why the upgrade is refused with 400."""
    raw = params.get("protocol")
    protocol = None
    if raw is not None:
        if not raw.isascii() or not raw.isdigit() or int(raw) > 255:
            return None, "protocol must be an unsigned integer 0-255"
        protocol = int(raw)
    echo = params.get("echo_messages")
    if echo is not None and echo not in ("true", "false"):
        return None, "echo_messages must be true or false"
    if protocol == 2:
        if normalize_format(params.get("format", "")) is None:
            return None, "unknown format"
        if params.get("append_mode", "delta") not in ("", "delta", "full"):
            return None, "append_mode must be delta or full"
        window = params.get("append_rollup_window")
        if window is not None and window not in _ROLLUP_WINDOWS:
            return None, "append_rollup_window must be one of 0, 20, 40, 100, 500"
    return protocol, None


def egress_for(protocol: int | None, params: dict[str, str]) -> Egress:
    """The frame builder a connection negotiated (the query already passed ``check_query``)."""
    if protocol != 2:
        return V1
    fmt = normalize_format(params.get("format", ""))
    assert fmt is not None
    return v2_egress(fmt)


def _recovery_enabled(app: AppConfig, settings: Settings) -> bool:
    override = app.connection_recovery_enabled
    return settings.connection_recovery_enabled if override is None else override


def origin_allowed(app: AppConfig, origin: str) -> bool:
    """Spec 01 §9.3 matching; ``""`` is a missing header (only ``*``/``any`` pass it)."""
    return origins.origin_allowed(app.allowed_origins, origin or None)


def new_socket_id(taken: Callable[[str], bool]) -> str:
    """Two decimal integers in [0, 10^10] joined by a dot, unique on this node (spec 01 §3.1)."""
    while True:
        sid = f"{secrets.randbelow(10**10 + 1)}.{secrets.randbelow(10**10 + 1)}"
        if not taken(sid):
            return sid


def admission_error(
    settings: Settings, hub: Hub, app: AppConfig | None, origin: str
) -> tuple[int, str] | None:
    """The first failing step of spec 01 §2.3 (V1: steps 1-5), or ``None`` to admit."""
    if app is None:
        return 4001, "Application does not exist"
    if not app.enabled:
        return 4003, "Application disabled"
    if not origin_allowed(app, origin):
        return 4009, "Origin not allowed"
    if settings.max_connections and hub.connection_count() >= settings.max_connections:
        return 4100, "Over capacity"
    if app.limits.max_connections and hub.connection_count(app.id) >= app.limits.max_connections:
        return 4004, "Application is over connection quota"
    return None


# --- the endpoint -------------------------------------------------------------------------------


async def websocket_v1(websocket: WebSocket) -> None:
    ctx: WsContext = websocket.app.state.ctx
    if ctx.settings.server_role == "api":
        # An API-role node serves HTTP only (spec 01 §9).
        await _deny(websocket, PlainTextResponse("Not Found", status_code=404))
        return
    if ctx.draining:
        await _deny(websocket, Response(status_code=503))
        return
    refusal = _connect_rate_limited(ctx.ws_limiter, websocket)
    if refusal is not None:
        await _deny(websocket, refusal)
        return
    params = query_params(websocket)
    protocol, problem = check_query(params)
    if problem is not None:
        await _deny(websocket, PlainTextResponse(problem, status_code=400))
        return
    egress = egress_for(protocol, params)
    await websocket.accept()
    settings, hub = ctx.settings, ctx.hub
    app = settings.app_by_key(websocket.path_params["app_key"])
    rejection = admission_error(settings, hub, app, websocket.headers.get("origin", ""))
    if rejection is None and protocol != 2 and "token" in params:
        # Capability tokens are a V2 feature (spec 02 §11).
        rejection = (4009, "Capability tokens require protocol V2")
    if rejection is not None:
        metrics.connection_error(app.id if app else "", _ERROR_TYPES.get(rejection[0], "other"))
        await _reject(websocket, egress, *rejection)
        return
    assert app is not None
    grant = None
    if "token" in params:  # V2 only (V1 was refused above): verified before admission ends
        assert ctx.connections is not None
        try:
            grant = token_auth.authenticate(
                params["token"], app, ctx.connections.channels, time.time()
            )
        except InvalidToken as exc:
            metrics.connection_error(app.id, "capability_token_invalid")
            await token_auth.reject(websocket, egress, exc)
            return
    socket_id = new_socket_id(hub.has_socket)
    outbox = Outbox(socket_id, app.id, egress=egress)
    transport = direct.transport_of(websocket.scope)
    watch: direct.FrameClock | None = None
    if transport is not None:
        outbox.attach(transport)
        # Control frames the server answers itself (client Pings, Pongs) count as activity.
        watch = direct.watch_inbound(websocket.scope)
    outbox.echo = params.get("echo_messages", "true") != "false"
    del params  # the query's strings would otherwise live as long as the socket
    now = time.monotonic()
    beats = None
    if protocol == 2 and watch is not None and _native_pings(settings):
        # Spec 02 §10.1: pings need the transport and pongs the watch; else §10.2's fallback.
        beats = NativeHeartbeat(
            ping_interval(settings.websocket_ping_interval, settings.activity_timeout),
            settings.websocket_pong_timeout,
            now,
        )
    session = Session(
        socket_id,
        app,
        activity_timeout=settings.activity_timeout,
        now=now,
        pong_timeout=settings.websocket_pong_timeout,
        app_heartbeat=beats is None,
        user_authentication_timeout=settings.user_authentication_timeout,
        out=egress,
        recovery_enabled=_recovery_enabled(app, settings),
        tag_filtering=settings.tag_filtering_enabled,
        annotations_enabled=lambda channel: (
            settings.annotations_enabled
            and resolve_channel_policy(channel, app, settings).annotations_enabled
        ),
        history_enabled=app_history_enabled(app, settings),
        rewind_enabled=settings.history_rewind_enabled
        if app.history.rewind_enabled is None
        else app.history.rewind_enabled,
    )
    outbox.predicates = session.predicates
    outbox.deltas = session.deltas
    writer = _Writer(websocket, outbox)
    if not outbox.direct:
        writer.start()  # it drains the queue every frame goes through
    hub.add(outbox)
    if grant is not None:
        token_auth.attach(session, outbox, hub, grant)
    metrics.connection_opened(app.id)
    outbox.offer(session.opening())
    assert ctx.connections is not None
    assert ctx.watchlists is not None
    env = effects.SocketEnv(app, session, outbox, hub, ctx.connections, ctx.watchlists, ctx.hot)
    try:
        await _read(websocket, env, writer, settings.websocket_max_payload_kb * 1024, watch, beats)
    finally:
        user_id = hub.user_of(socket_id)
        hub.remove(socket_id)
        await env.history.close()
        ctx.watchlists.socket_gone(app.id, socket_id, user_id)
        await _leave_presence(env)
        metrics.connection_closed(app.id)
        if not writer.done():
            outbox.request_close(1000, "")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.start(), 5)


def query_params(websocket: WebSocket) -> dict[str, str]:
    """``dict(websocket.query_params)``, without Starlette caching its parse on the socket."""
    query = websocket.scope["query_string"].decode("latin-1")
    return dict(parse_qsl(query, keep_blank_values=True))


class _Writer:
    """The socket's only ASGI sender after admission, a task started when there is work for it.

    A direct-mode socket writes its frames straight to the transport: until a close is
    requested it has nothing to send through ASGI, and an idle socket then holds no writer
    task, coroutines or wake-up event (~2 KiB of its footprint).
    """

    __slots__ = ("_outbox", "_task", "_websocket", "waiting", "wake")

    def __init__(self, websocket: WebSocket, outbox: Outbox) -> None:
        self._websocket = websocket
        self._outbox = outbox
        self._task: asyncio.Task[None] | None = None
        self.waiting: asyncio.Timeout | None = None
        """The read loop's wait for a frame: the writer's end expires it (see :func:`_read`)."""
        self.wake: Callable[[], None] | None = None
        """Ends the read loop's wait when the server waits with the deadline itself."""
        outbox.on_close_request = self.start

    def start(self) -> asyncio.Task[None]:
        task = self._task
        if task is None:
            outbox = self._outbox
            task = asyncio.create_task(
                _write(self._websocket, outbox), name=f"ws-writer:{outbox.socket_id}"
            )
            task.add_done_callback(self._finished)
            self._task = task
        return task

    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def _finished(self, _task: asyncio.Task[None]) -> None:
        if self.wake is not None:
            self.wake()
        waiting = self.waiting
        if waiting is not None and not waiting.expired():
            waiting.reschedule(asyncio.get_running_loop().time())


def _native_pings(settings: Settings) -> bool:
    return settings.websocket_auto_ping and settings.websocket_ping_interval > 0


def _connect_rate_limited(limiter: IpRateLimiter | None, websocket: WebSocket) -> Response | None:
    """The 429 of spec 01 §2.2 when this client IP connects too often (limiter enabled)."""
    if limiter is None:
        return None
    decision = limiter.check_request(websocket.scope)
    metrics.rate_limit_check("", "ip", "websocket_connect")
    if decision.allowed:
        return None
    metrics.rate_limit_triggered("", "ip", "websocket_connect")
    return JSONResponse(ip_limit.TOO_MANY, status_code=429, headers=decision.headers())


async def _deny(websocket: WebSocket, response: Response) -> None:
    """A plain HTTP answer instead of the upgrade (spec 01 §2.2)."""
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        # Server without the denial extension: closing before accept yields HTTP 403.
        await websocket.close()


def _size(frame: Frame) -> int:
    return metrics.utf8_len(frame) if isinstance(frame, str) else len(frame)


async def _send(websocket: WebSocket, frame: Frame) -> None:
    if isinstance(frame, str):
        await websocket.send_text(frame)
    else:
        await websocket.send_bytes(frame)


async def _reject(websocket: WebSocket, egress: Egress, code: int, reason: str) -> None:
    """Admission failure: the error frame, then the close with the same code (spec 01 §2.3)."""
    try:
        await _send(websocket, egress.error(code, reason))
        await websocket.close(code, reason)
    except Exception as exc:  # the client already left; nothing to tell it
        log.debug("rejecting a socket with %s failed: %s", code, exc)


async def _leave_presence(env: effects.SocketEnv) -> None:
    """Append the leaves of every presence channel the socket was still in."""
    cause = env.outbox.close_cause
    for channel, user_id in sorted(env.session.presence.items()):
        await effects.run(PresenceLeave(channel, user_id, cause), env)
    env.session.presence.clear()


async def _read(
    websocket: WebSocket,
    env: effects.SocketEnv,
    writer: _Writer,
    max_bytes: int,
    watch: direct.FrameClock | None = None,
    beats: NativeHeartbeat | None = None,
) -> None:
    """Inbound frames until the client leaves or the writer has closed the socket."""
    session, outbox = env.session, env.outbox
    receiver = direct.deadline_receiver(websocket.scope)
    if receiver is not None:
        writer.wake = receiver.wake
    while not writer.done():
        deadline = session.next_deadline()
        if beats is not None:
            deadline = min(deadline, beats.next_deadline())
        message: Message | None
        if receiver is not None:
            # The server waits with the deadline itself; the writer's end wakes it.
            message = await receiver.receive_until(deadline)
        else:
            message = await _receive_until(websocket, writer, deadline)
        if message is None:
            if not writer.done():
                await _tick(env, watch, beats)
            continue
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        raw = text if isinstance(text, str) else message.get("bytes")
        if not isinstance(raw, str | bytes):
            continue
        size = len(raw.encode()) if isinstance(raw, str) else len(raw)
        metrics.ws_received(outbox.app_id, size)
        if size > max_bytes:
            outbox.request_close(MESSAGE_TOO_BIG, "Message too big")
            continue  # the writer sends the close; the loop ends when it is done
        await _apply(session.handle(raw, time.monotonic()), env)


async def _receive_until(websocket: WebSocket, writer: _Writer, deadline: float) -> Message | None:
    """``websocket.receive()``, or ``None`` at ``deadline`` or when the writer has ended."""
    timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
    # An idle socket waits here, in the endpoint's own task: no receive task and no
    # asyncio.wait machinery per socket. The deadline, or the writer's end (a close, be it
    # fanout's 4100, shutdown's 4200 or our own 4201/1009, has gone out), expires the wait;
    # cancelling the receive loses nothing, the server's queue keeps the message.
    try:
        async with asyncio.timeout(timeout) as waiting:
            writer.waiting = waiting
            try:
                return await websocket.receive()
            finally:
                writer.waiting = None
    except TimeoutError:
        if not waiting.expired():
            raise
        return None


async def _tick(
    env: effects.SocketEnv, watch: direct.FrameClock | None, beats: NativeHeartbeat | None
) -> None:
    """A deadline passed: the native heartbeat's (spec 02 §10.1), then the session's."""
    session, outbox = env.session, env.outbox
    now = time.monotonic()
    if watch is not None:
        session.saw_frames(watch.last_frame, watch.last_ping)
        if beats is not None:
            beat = beats.tick(now, watch.last_frame)
            if beat is Beat.PING:
                # ASGI cannot ping: write the control frame as direct mode writes data frames
                # (refused only when closing or past the write bound, where fanout closes 4100).
                outbox.offer_wire(PING_FRAME)
            elif beat is Beat.TIMEOUT:
                outbox.request_close(PONG_TIMEOUT_CODE, PONG_TIMEOUT_REASON)
                return
    await _apply(session.tick(now), env)


async def _apply(reply: Reply, env: effects.SocketEnv) -> None:
    # Join before the success frame is queued and the frame goes through the same queue as
    # fanout, so no message published after subscription_succeeded can be missed.
    session, outbox, hub = env.session, env.outbox, env.hub
    if reply.join is not None:
        hub.subscribe(session.socket_id, reply.join)
    if reply.leave is not None:
        hub.unsubscribe(session.socket_id, reply.leave)
    for frame in reply.frames:
        if not outbox.offer(frame):
            outbox.request_close(4100, "Over capacity")
            return
    for effect in reply.effects:
        await effects.run(effect, env)
    if reply.close is not None:
        outbox.request_close(*reply.close)


async def _write(websocket: WebSocket, outbox: Outbox) -> None:
    """The only sender after admission: queued frames in order, then the requested close."""
    try:
        while True:
            await outbox.wait()
            frames = outbox.take()
            for frame in frames:
                await _send(websocket, frame)
            if frames:
                size = sum(map(_size, frames))
                metrics.ws_sent(outbox.app_id, size, len(frames))
            if outbox.close_request is not None:
                code, reason = outbox.close_request
                if code >= 4000:
                    # Every server close >= 4000 is preceded by the same error (spec 01 §2.4).
                    error = outbox.egress.error(code, reason)
                    if not outbox.write_last(error):
                        await _send(websocket, error)
                    metrics.ws_sent(outbox.app_id, _size(error))
                await websocket.close(code, reason)
                return
    except Exception as exc:  # the peer went away mid-send; the read loop sees the disconnect
        log.debug("writer of %s stopped: %s", outbox.socket_id, exc)
