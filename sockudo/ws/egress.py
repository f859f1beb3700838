"""Outbound frames per connection protocol: one builder for V1 (Pusher JSON), one per V2 format.

The session and fanout name frames canonically (``connection_established``, ``error``, ...);
the connection's :class:`Egress` applies its prefix (``pusher:`` or ``sockudo:``) and wire
format in this one place (spec 02 §1.3). ``key`` identifies a (protocol, format) pair: fanout
encodes each message once per key and shares the frame between sockets.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from projections.folds.state import Delivery
from sockudo.ws import v1
from sockudo.ws.framing import encode_frame, payload_length
from sockudo.ws.wire import AiExtras, Data, Envelope, Extras, WireFormat, encode

Frame = str | bytes
"""Text (V1, V2 json) or binary (V2 msgpack/protobuf) WebSocket frame."""

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class Egress(Protocol):
    """Builds every frame a connection of one (protocol, format) receives."""

    protocol: int
    fmt: WireFormat
    key: str

    def connection_established(self, socket_id: str, activity_timeout: int) -> Frame: ...
    def error(self, code: int, message: str, channel: str | None = None) -> Frame: ...
    def ping(self) -> Frame: ...
    def pong(self) -> Frame: ...
    def subscription_succeeded(
        self,
        channel: str,
        data: dict[str, Any] | None = None,
        stream_id: str | None = None,
        serial: int | None = None,
    ) -> Frame: ...
    def cache_miss(self, channel: str) -> Frame: ...
    def signin_success(self, user_data: str) -> Frame: ...
    def watchlist_events(self, events: list[tuple[str, list[str]]]) -> Frame: ...
    def presence_edge(self, kind: str, channel: str, data: str) -> Frame: ...
    def message(self, d: Delivery) -> Frame: ...
    def cached_message(self, event: str, channel: str, data: str) -> Frame: ...
    def system(self, event: str, channel: str | None, data: Any) -> Frame: ...
    def internal(self, event: str, channel: str | None, data: Any) -> Frame: ...
    def resume_failed(self, channel: str, failure: dict[str, Any]) -> Frame: ...
    def resume_success(self, result: dict[str, Any]) -> Frame: ...


class V1Egress:
    """Pusher protocol 7: exactly the Pusher fields, ``pusher:`` prefixes, always JSON text."""

    protocol = 1
    fmt: WireFormat = "json"
    key = "v1"

    def connection_established(self, socket_id: str, activity_timeout: int) -> Frame:
        return v1.connection_established(socket_id, activity_timeout)

    def error(self, code: int, message: str, channel: str | None = None) -> Frame:
        return v1.error(code, message, channel)

    def ping(self) -> Frame:
        return v1.ping()

    def pong(self) -> Frame:
        return v1.pong()

    def subscription_succeeded(
        self,
        channel: str,
        data: dict[str, Any] | None = None,
        stream_id: str | None = None,
        serial: int | None = None,
    ) -> Frame:
        # V1 never carries stream positions (spec 02 §4.4).
        return v1.subscription_succeeded(channel, _strip_attach(data))

    def cache_miss(self, channel: str) -> Frame:
        return v1.cache_miss(channel)

    def signin_success(self, user_data: str) -> Frame:
        return v1.signin_success(user_data)

    def watchlist_events(self, events: list[tuple[str, list[str]]]) -> Frame:
        return v1.watchlist_events(events)

    def presence_edge(self, kind: str, channel: str, data: str) -> Frame:
        return v1.message(f"pusher_internal:{kind}", channel, data)

    def cached_message(self, event: str, channel: str, data: str) -> Frame:
        return v1.message(event, channel, data)

    def message(self, d: Delivery) -> Frame:
        if d.client_event and d.data_is_json:
            return v1.raw_data_message(d.event, d.channel, d.data, d.user_id)
        return v1.message(d.event, d.channel, d.data, d.user_id if d.client_event else None)

    def resume_failed(self, channel: str, failure: dict[str, Any]) -> Frame:
        return _resume_failed(self, channel, failure)

    def resume_success(self, result: dict[str, Any]) -> Frame:
        return self.system_text("resume_success", None, _COMPACT.encode(result))

    def system_text(self, event: str, channel: str | None, text: str) -> Frame:
        return self.system(event, channel, text)

    def system(self, event: str, channel: str | None, data: Any) -> Frame:
        frame: dict[str, Any] = {"event": f"pusher:{event}"}
        if channel is not None:
            frame["channel"] = channel
        frame["data"] = data
        return _COMPACT.encode(frame)

    def internal(self, event: str, channel: str | None, data: Any) -> Frame:
        frame: dict[str, Any] = {"event": f"pusher_internal:{event}"}
        if channel is not None:
            frame["channel"] = channel
        frame["data"] = data
        return _COMPACT.encode(frame)


def _resume_failed(egress: Any, channel: str, failure: dict[str, Any]) -> Frame:
    # `data` is a JSON *string* carrying `channel` too (spec 02 §7.4).
    frame: Frame = egress.system_text("resume_failed", channel, _COMPACT.encode(failure))
    return frame


def _strip_attach(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if data is None or "attach_serial" not in data:
        return data
    rest = {k: v for k, v in data.items() if k != "attach_serial"}
    return rest or None


V1 = V1Egress()


class V2Egress:
    """Sockudo protocol 2 in one wire format (``json``, ``msgpack`` or ``protobuf``)."""

    protocol = 2

    def __init__(self, fmt: WireFormat) -> None:
        self.fmt = fmt
        self.key = f"v2:{fmt}"

    def _frame(self, env: Envelope) -> Frame:
        return encode(env, self.fmt)

    def system(self, event: str, channel: str | None, data: Any) -> Frame:
        """``sockudo:<event>`` with ``data`` as a JSON value (``None``: no data member)."""
        return self._frame(
            Envelope(
                event=f"sockudo:{event}",
                channel=channel,
                data=None if data is None else Data.of_value(data),
            )
        )

    def system_text(self, event: str, channel: str | None, text: str) -> Frame:
        """``sockudo:<event>`` whose ``data`` is the JSON string ``text``."""
        return self._frame(
            Envelope(event=f"sockudo:{event}", channel=channel, data=Data.of_text(text))
        )

    def resume_failed(self, channel: str, failure: dict[str, Any]) -> Frame:
        return _resume_failed(self, channel, failure)

    def resume_success(self, result: dict[str, Any]) -> Frame:
        return self.system_text("resume_success", None, _COMPACT.encode(result))

    def _internal(self, event: str, channel: str | None, data: Data | None) -> Frame:
        return self._frame(Envelope(event=f"sockudo_internal:{event}", channel=channel, data=data))

    def internal(self, event: str, channel: str | None, data: Any) -> Frame:
        """``sockudo_internal:<event>`` with ``data`` as a JSON value (``[meta]`` frames)."""
        return self._internal(event, channel, Data.of_value(data))

    def connection_established(self, socket_id: str, activity_timeout: int) -> Frame:
        # `data` is a JSON *string* here, as on V1 (spec 02 §3).
        inner = _COMPACT.encode({"socket_id": socket_id, "activity_timeout": activity_timeout})
        return self._frame(
            Envelope(event="sockudo:connection_established", data=Data.of_text(inner))
        )

    def error(self, code: int, message: str, channel: str | None = None) -> Frame:
        return self.system("error", channel, {"code": code, "message": message})

    def ping(self) -> Frame:
        return self._frame(Envelope(event="sockudo:ping", data=Data.of_value({})))

    def pong(self) -> Frame:
        return self._frame(Envelope(event="sockudo:pong"))

    def subscription_succeeded(
        self,
        channel: str,
        data: dict[str, Any] | None = None,
        stream_id: str | None = None,
        serial: int | None = None,
    ) -> Frame:
        inner = "{}" if not data else _COMPACT.encode(data)
        return self._frame(
            Envelope(
                event="sockudo_internal:subscription_succeeded",
                channel=channel,
                data=Data.of_text(inner),
                # `serial` (the head, 0 before any publish) is always there; `stream_id` only
                # once the channel has a generation (spec 02 §3, check 7).
                stream_id=stream_id,
                serial=serial,
            )
        )

    def cache_miss(self, channel: str) -> Frame:
        return self._frame(
            Envelope(event="sockudo:cache_miss", channel=channel, data=Data.of_text("{}"))
        )

    def signin_success(self, user_data: str) -> Frame:
        return self.system("signin_success", None, {"user_data": user_data})

    def watchlist_events(self, events: list[tuple[str, list[str]]]) -> Frame:
        data = {"events": [{"name": name, "user_ids": ids} for name, ids in events]}
        return self._internal("watchlist_events", None, Data.of_value(data))

    def presence_edge(self, kind: str, channel: str, data: str) -> Frame:
        return self._internal(kind, channel, Data.of_text(data))

    def cached_message(self, event: str, channel: str, data: str) -> Frame:
        """A cache channel's last event: no stream position (it is not a live delivery)."""
        return self._frame(Envelope(event=event, channel=channel, data=v2_data(data, False)))

    def message(self, d: Delivery) -> Frame:
        """A channel message with its V2 metadata (spec 02 §4)."""
        extras = extras_of(d.extras_json) if d.extras_json is not None else None
        return self._frame(
            Envelope(
                event=d.event,
                channel=d.channel,
                data=binary_data(d.data) if d.data_is_binary else v2_data(d.data, d.data_is_json),
                user_id=d.user_id,
                tags=dict(d.tags) if d.tags else None,
                message_id=d.message_id or None,
                stream_id=d.stream_id,
                serial=d.serial,
                extras=extras,
            )
        )


def extras_of(extras_json: str) -> Extras | None:
    """The sanitised extras stored with a publish (publish_request.py) as a wire value."""
    raw = json.loads(extras_json)
    ai = raw.get("ai")
    extras = Extras(
        headers=raw.get("headers"),
        ephemeral=raw.get("ephemeral"),
        idempotency_key=raw.get("idempotency_key"),
        echo=raw.get("echo"),
        ai=AiExtras(transport=ai.get("transport"), codec=ai.get("codec"))
        if isinstance(ai, dict)
        else None,
    )
    return None if extras == Extras() else extras


def binary_data(data: str) -> Data:
    """Raw bytes stored as their JSON int array (``data_is_binary``): ``binary`` kind, so
    msgpack sends ``["binary", bin]``, protobuf ``binary_value`` and JSON the int array
    (spec 02 §2.2-2.4)."""
    raw = bytes(json.loads(data))
    return Data("binary", raw, raw)


def v2_data(data: str, is_json: bool) -> Data:
    """Spec 02 §2.4: JSON values as themselves; a string holding a JSON object/array parsed."""
    if is_json:
        return Data.of_json_text(data)
    head = data.lstrip()[:1]
    if head in ("{", "["):
        try:
            value = json.loads(data)
        except ValueError:
            return Data.of_text(data)
        return Data.of_json_text(_COMPACT.encode(value))
    return Data.of_text(data)


_V2: dict[WireFormat, V2Egress] = {}


def v2(fmt: WireFormat) -> V2Egress:
    """The shared egress of a V2 format."""
    egress = _V2.get(fmt)
    if egress is None:
        egress = _V2[fmt] = V2Egress(fmt)
    return egress


ReplayKey = tuple[str, str, str, str | None, int, str]
"""``(egress key, app id, channel, stream id, serial, message id)``: one stored message."""


class ReplayFrames:
    """Replayed messages' frames by (protocol, format), encoded once and shared between sockets.

    After an outage every subscriber of a channel resumes from about the same position, so
    each replays the same tail of the channel: the frame and its WebSocket bytes are built for
    the first and reused for the rest. A message is named by its stream position (a serial is
    never reused within a stream, and a new generation has a new ``stream_id``) plus its
    ``message_id``, so a hit is always the frame :meth:`V2Egress.message` would build. Bounded
    by entries and by encoded bytes; the oldest entries go first (a replay is the newest tail
    of a channel, so insertion order is close enough to use order, and a hit stays cheap).
    """

    __slots__ = ("_entries", "bytes", "max_bytes", "max_entries")

    def __init__(self, max_entries: int = 20_000, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[ReplayKey, tuple[Frame, bytes, int]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, egress: Egress, d: Delivery) -> tuple[Frame, bytes, int]:
        """``d``'s frame for ``egress``, its WebSocket encoding and its payload length."""
        serial = d.serial
        if serial is None:  # no stream position to name it by: never shared
            return _encoded(egress.message(d))
        key = (egress.key, d.app_id, d.channel, d.stream_id, serial, d.message_id)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _encoded(egress.message(d))
            self.bytes += len(entry[1])
            if len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                self._trim()
        return entry

    def _trim(self) -> None:
        entries = self._entries
        while len(entries) > self.max_entries or (self.bytes > self.max_bytes and len(entries) > 1):
            oldest = next(iter(entries))
            self.bytes -= len(entries.pop(oldest)[1])


def _encoded(frame: Frame) -> tuple[Frame, bytes, int]:
    wire = encode_frame(frame)
    return frame, wire, payload_length(wire)


REPLAY_FRAMES = ReplayFrames()
"""The node's shared cache of replayed frames (one per process, like the egresses)."""
