"""Drive the real ``sockudo-python`` 2.2.0 client against a node (spec 02, "the Python client").

* :class:`ProbeClient` is ``SockudoClient`` plus observation only: every inbound frame is also
  decoded with the client's own ``ProtocolCodec`` *before* the client deduplicates it (so tests
  see what the server sent, including repeats the client would hide), every outbound frame the
  client sends is recorded, a gate can hold (re)connects, and :meth:`ProbeClient.wait` waits on a
  condition re-checked after every frame instead of sleeping.
* :class:`ChannelLog` records what the application sees on a channel (its ``bind_global``).
* :class:`HistoryProxy` is the "backend proxy" the client needs for ``channel.history()`` (spec 02
  §8, spec 03 §9.2): it receives ``{"channel", "params", "action"}`` and forwards to the HTTP
  history API. The HTTP API has no ``until_attach``; like a customer backend, the proxy turns the
  client's ``until_attach`` + ``attach_serial`` into ``end_serial = min(end_serial,
  attach_serial)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sockudo_python import (  # type: ignore[import-untyped]
    ChannelAuthorizationOptions,
    ChannelHistoryOptions,
    ConnectionState,
    SockudoChannel,
    SockudoClient,
    SockudoOptions,
    SockudoTransport,
    SockudoWireFormat,
)
from sockudo_python.client import ProtocolCodec, SockudoEvent  # type: ignore[import-untyped]

from tests.support.api import SignedClient
from tests.support.local_http import LocalJsonServer
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess

TIMEOUT = 5.0
"""Default wait: every step here takes milliseconds on loopback, also on Kafka."""

FORMATS: dict[str, Any] = {
    "json": SockudoWireFormat.JSON,
    "messagepack": SockudoWireFormat.MESSAGEPACK,
    "protobuf": SockudoWireFormat.PROTOBUF,
}
"""The client's wire formats by the ``format=`` value it sends (note ``messagepack``)."""


@dataclass
class Frame:
    """One inbound frame as the client's codec decodes it."""

    event: Any
    """The client's ``SockudoEvent`` (``data`` already JSON-parsed when it was a string)."""
    envelope: dict[str, Any]
    """``ProtocolCodec.decode_envelope``: every member, ``data`` as on the wire (json/msgpack)."""
    connection: int
    """1 for the first WebSocket of the client, 2 after the first reconnect, …"""

    @property
    def name(self) -> str:
        return str(self.event.event)

    @property
    def channel(self) -> str | None:
        return self.event.channel  # type: ignore[no-any-return]

    @property
    def serial(self) -> int | None:
        return self.event.serial  # type: ignore[no-any-return]

    @property
    def message_id(self) -> str | None:
        return self.event.message_id  # type: ignore[no-any-return]

    @property
    def stream_id(self) -> str | None:
        return self.event.stream_id  # type: ignore[no-any-return]

    @property
    def data(self) -> Any:
        return self.event.data

    def is_app_event(self) -> bool:
        return not self.name.startswith(("sockudo:", "sockudo_internal:"))

    def __repr__(self) -> str:
        return (
            f"Frame(#{self.connection} {self.name} ch={self.channel} serial={self.serial} "
            f"id={self.message_id} data={self.data!r:.120})"
        )


class ProbeClient(SockudoClient):  # type: ignore[misc]
    """The real client; the overrides only observe, then call the client's own code."""

    def __init__(self, key: str, options: Any) -> None:
        super().__init__(key, options)
        self.frames: list[Frame] = []
        self.sent: list[tuple[str, Any, str | None]] = []
        """Every ``(event, data, channel)`` the client sent, in order."""
        self.errors: list[Any] = []
        """Payloads of the client's ``error`` event (``sockudo:error`` data, exceptions, …)."""
        self.closes: list[int] = []
        self.gate: asyncio.Event | None = None
        """When set to an unset event, the next (re)connect waits for it."""
        self.connections = 0
        self._changed = asyncio.Condition()
        self.bind("error", lambda data, _meta: self.errors.append(data))

    # -- observation hooks (each delegates to the client) -----------------------------------

    async def _open_websocket(self, transport: Any) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.connections += 1
        await super()._open_websocket(transport)

    async def _handle_raw_message(self, raw_message: str | bytes) -> None:
        fmt = self.options.wire_format
        with contextlib.suppress(Exception):  # the client reports its own decode errors
            envelope, _ = ProtocolCodec.decode_envelope(raw_message, fmt)
            event: SockudoEvent = ProtocolCodec.decode_event(raw_message, fmt)
            self.frames.append(Frame(event, envelope, self.connections))
        await super()._handle_raw_message(raw_message)
        await self._notify()

    async def _handle_socket_closed(self, code: int, reason: str) -> None:
        self.closes.append(code)
        await super()._handle_socket_closed(code, reason)
        await self._notify()

    async def send_event(self, name: str, data: Any, channel: str | None) -> bool:
        self.sent.append((name, data, channel))
        return bool(await super().send_event(name, data, channel))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- helpers for tests ------------------------------------------------------------------

    async def wait(self, predicate: Callable[[], bool], what: str, within: float = TIMEOUT) -> None:
        """Until ``predicate()`` holds (re-checked after every frame and close)."""
        # Frames and closes notify; state changes made by the client's own background tasks
        # (its reconnect task, say) do not, so re-check at least every 50 ms as well.
        try:
            async with asyncio.timeout(within):
                while not predicate():
                    async with self._changed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), 0.05)
        except TimeoutError:
            recent = "\n  ".join(repr(f) for f in self.frames[-15:])
            raise AssertionError(
                f"timed out after {within}s waiting for {what}; client errors={self.errors!r}; "
                f"last frames:\n  {recent}"
            ) from None

    async def wait_connected(self, within: float = TIMEOUT) -> None:
        await self.wait(
            lambda: self.connection_state is ConnectionState.CONNECTED, "connected", within
        )

    def subscribe_logged(self, name: str, options: Any = None) -> tuple[SockudoChannel, ChannelLog]:
        channel = self.subscribe(name, options)
        log = ChannelLog()
        channel.bind_global(log.record)
        return channel, log

    async def subscribed(self, name: str, options: Any = None) -> tuple[SockudoChannel, ChannelLog]:
        """Subscribe and wait for ``subscription_succeeded`` (the client's local event)."""
        channel, log = self.subscribe_logged(name, options)
        await self.wait(lambda: log.count("sockudo:subscription_succeeded") > 0, f"{name} ack")
        return channel, log

    def drop(self) -> None:
        """Kill the WebSocket under the client abruptly (no close frame: 1006)."""
        assert self.socket is not None, "not connected"
        self.socket.transport.abort()

    def app_frames(self, channel: str, connection: int | None = None) -> list[Frame]:
        return [
            f
            for f in self.frames
            if f.channel == channel
            and (f.is_app_event() or f.name == "sockudo:delta")
            and (connection is None or f.connection == connection)
        ]

    def frames_named(self, name: str, channel: str | None = None) -> list[Frame]:
        return [
            f for f in self.frames if f.name == name and (channel is None or f.channel == channel)
        ]

    def sent_named(self, name: str) -> list[tuple[str, Any, str | None]]:
        return [s for s in self.sent if s[0] == name]

    def position(self, channel: str) -> Any:
        """The client's stored recovery position (``RecoveryPosition``) or ``None``."""
        return self._channel_positions.get(channel)

    def error_codes(self) -> list[int]:
        return [e["code"] for e in self.errors if isinstance(e, dict) and "code" in e]


@dataclass
class ChannelLog:
    """What the application sees on one channel: ``(event name, data)`` in dispatch order."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    def record(self, event: str, data: Any) -> None:
        self.events.append((event, data))

    def app(self) -> list[tuple[str, Any]]:
        return [(e, d) for e, d in self.events if not e.startswith("sockudo:")]

    def data_of(self, event: str | None = None) -> list[Any]:
        return [d for e, d in self.app() if event is None or e == event]

    def of(self, event: str) -> list[Any]:
        return [d for e, d in self.events if e == event]

    def count(self, event: str) -> int:
        return len(self.of(event))

    def has_data(self, data: Any) -> Callable[[], bool]:
        """A predicate for :meth:`ProbeClient.wait`: an application event carried ``data``."""
        return lambda: data in self.data_of()

    def has_event(self, event: str) -> Callable[[], bool]:
        return lambda: self.count(event) > 0


def client_options(
    node: NodeProcess,
    fmt: str = "json",
    *,
    echo: bool = True,
    recovery: bool = False,
    delta: Any = None,
    auth_endpoint: str | None = None,
    history_endpoint: str | None = None,
    **extra: Any,
) -> Any:
    """``SockudoOptions`` for a plain-``ws`` node on loopback.

    ``enabled_transports=[WS]``: with ``ws`` and ``wss`` both allowed, the client's first
    reconnect after a drop tries ``wss`` (``_schedule_retry``'s fallback), which fails against a
    plain node and leaves the client stuck.
    """
    opts: dict[str, Any] = {
        "cluster": "local",
        "ws_host": "127.0.0.1",
        "ws_port": node.port,
        "force_tls": False,
        "enabled_transports": [SockudoTransport.WS],
        "wire_format": FORMATS[fmt],
        "echo_messages": echo,
        "connection_recovery": recovery,
        "unavailable_timeout": 30.0,
    }
    if delta is not None:
        opts["delta_compression"] = delta
    if auth_endpoint is not None:
        opts["channel_authorization"] = ChannelAuthorizationOptions(endpoint=auth_endpoint)
    if history_endpoint is not None:
        opts["channel_history"] = ChannelHistoryOptions(endpoint=history_endpoint)
    opts.update(extra)
    return SockudoOptions(**opts)


@contextlib.asynccontextmanager
async def sockudo_client(
    node: NodeProcess, fmt: str = "json", **kwargs: Any
) -> AsyncIterator[ProbeClient]:
    """A connected :class:`ProbeClient`; disconnected (and its HTTP client closed) on exit."""
    client = ProbeClient(APP_KEY, client_options(node, fmt, **kwargs))
    try:
        await client.connect()
        await client.wait_connected()
        yield client
    finally:
        # A reconnect still pending (held at the gate, say) must not open a socket afterwards.
        retry = client._retry_task
        await client.disconnect()  # cancels the client's timers and its retry task
        for task in (retry, client._receive_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


@dataclass
class ProxyRequest:
    channel: str
    params: dict[str, Any]
    action: str
    status: int


class HistoryProxy(LocalJsonServer):
    """The application backend the client calls for ``channel.history()`` (spec 02 §8)."""

    thread_name = "history-proxy"

    def __init__(self, node: NodeProcess) -> None:
        self.api = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
        self.requests: list[ProxyRequest] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/history"

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        channel = body.get("channel")
        params = body.get("params") or {}
        if body.get("action") != "history" or not isinstance(channel, str):
            return 400, {"error": f"unsupported proxy request {body!r}"}
        query = {
            k: str(params[k])
            for k in ("direction", "limit", "cursor", "start_serial", "end_serial")
            if params.get(k) is not None
        }
        attach = params.get("attach_serial")
        if params.get("until_attach"):
            if attach is None:
                return 400, {"error": "until_attach without attach_serial"}
            end = params.get("end_serial")
            query["end_serial"] = str(attach if end is None else min(int(end), int(attach)))
        with self._lock:
            response = self.api.history(channel, **query)
        payload = response.json()
        if response.status_code == 200 and attach is not None:
            payload["attach_serial"] = attach
        return response.status_code, payload

    def handle_post(self, path: str, raw: bytes) -> tuple[int, Any]:
        body = json.loads(raw or b"{}")
        body = body if isinstance(body, dict) else {}
        status, payload = self.answer(body)
        with self._lock:
            self.requests.append(
                ProxyRequest(
                    str(body.get("channel")),
                    dict(body.get("params") or {}),
                    str(body.get("action")),
                    status,
                )
            )
        return status, payload

    def stop(self) -> None:
        super().stop()
        self.api.close()
